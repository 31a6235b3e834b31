"""Embed the images of a training pack or an aligned set with one model: data/features/<NAME>/. (arcpipe.stages.features)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("features"))
