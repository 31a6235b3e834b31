"""Detect faces (MTCNN) in one data set of detect.datasets: data/detect/<NAME>/manifest.parquet. (arcpipe.stages.detect)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("detect"))
