# Shared by every rule file: validate the merged config up front and hand it to the stage
# scripts as one content-addressed file, so `--configfile params/<variant>.yaml` and
# `--config key=value` reach the scripts exactly as Snakemake merged them.
import hashlib
import os
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from arcpipe.params import ParamsError, validate

try:
    PARAMS = validate(config, default="config (params.yaml + --configfile/--config)")
except ParamsError as e:
    raise WorkflowError(str(e)) from None


def _merged_params_file() -> str:
    text = yaml.safe_dump(dict(config), sort_keys=True)
    out = Path(".snakemake/arcpipe") / f"params.{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, out)
    return str(out)


PARAMS_FILE = _merged_params_file()
PY = sys.executable  # the interpreter running Snakemake, which has arcpipe (imported above)
DATASETS = sorted(PARAMS.detect.datasets)
