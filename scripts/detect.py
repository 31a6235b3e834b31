"""Detect faces (MTCNN) in one data set of detect.datasets: data/detect/<NAME>/manifest.parquet."""
from arcpipe.detect.stage import add_dataset_argument, run_detect
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("detect", run_detect, add_arguments=add_dataset_argument,
                               description=__doc__))
