"""The embedded sample data set, generated offline from real photos that installed wheels ship.

`python scripts/sample.py` writes data/sample/ (contract 5): a training set as identity folders
and as an MS-Celeb-1M TSV, an LFW-style verification set, an IJB-style template set and a
MegaFace-style probe/distractor set, with known noise recorded in ground_truth.json.
"""
from .generate import GROUND_TRUTH, Plan, build, plan_sample

__all__ = ["GROUND_TRUTH", "Plan", "build", "plan_sample"]
