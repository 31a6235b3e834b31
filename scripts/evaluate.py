"""Evaluate one face model on every benchmark in params.yaml `evaluate` (metrics/, plots/). (arcpipe.stages.evaluate)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("evaluate"))
