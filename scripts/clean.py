"""Clean the training pack MS1MV2-style with the bootstrap model's features: data/clean/. (arcpipe.stages.clean)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("clean"))
