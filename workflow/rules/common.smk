# Shared by every rule file: validate the merged config up front and hand it to the stage
# scripts as one content-addressed file, so `--configfile params/<variant>.yaml` and
# `--config key=value` reach the scripts exactly as Snakemake merged them.
import sys

from snakemake.exceptions import WorkflowError

from arcpipe.params import ParamsError, validate
from arcpipe.runner import write_params_snapshot
from arcpipe.stages.code import stage_code  # the code each rule runs: an input, so code changes rerun it

try:
    PARAMS = validate(config, default="config (params.yaml + --configfile/--config)")
except ParamsError as e:
    raise WorkflowError(str(e)) from None


PARAMS_FILE = write_params_snapshot(config)
PY = sys.executable  # the interpreter running Snakemake, which has arcpipe (imported above)
DATASETS = sorted(PARAMS.detect.datasets)
