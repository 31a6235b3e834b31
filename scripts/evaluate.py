"""Evaluate one face model on every benchmark in params.yaml `evaluate` (metrics/, plots/)."""
from arcpipe.evaluate.stage import run_evaluate
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("evaluate", run_evaluate))
