"""Train the bootstrap model for cleaning on the raw pack: models/train_bootstrap/ (arcpipe.stages.train_bootstrap)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("train_bootstrap"))
