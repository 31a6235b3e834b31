"""Stage `sample`: generate the embedded sample data set (data/sample) from params.yaml `sample`."""
from arcpipe.sample import run_sample
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("sample", run_sample))
