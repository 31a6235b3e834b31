"""Train the face embedding (ArcFace) on the pack stage's train.rec: models/train/ (arcpipe.stages.train)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("train"))
