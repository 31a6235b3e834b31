"""Align detected faces to the ArcFace template: data/align/<NAME>/ (faces.rec/.idx, manifest)."""
from arcpipe.align_stage import run_align
from arcpipe.detect.stage import add_dataset_argument
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("align", run_align, add_arguments=add_dataset_argument,
                               description=__doc__))
