"""`arcpipe` command: check params, show the merged result, run a variant as a DVC experiment.

    arcpipe params check [--params params.yaml [variant.yaml ...]]
    arcpipe params show  [--params ...] [--key detect.shards]
    arcpipe params dvc-args params/variant.yaml      # -S overrides, shell-quoted
    arcpipe exp-run params/variant.yaml [-- dvc exp run options]
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from typing import Any, Mapping, Sequence

from .errors import PipelineError
from .params import flatten, load_params, load_yaml


def _hydra_value(v: Any) -> str:
    """A value in the override grammar `dvc exp run -S` parses (Hydra's)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(x)}" for k, x in v.items()) + "}"
    raise PipelineError(f"cannot express {type(v).__name__} value {v!r} as a DVC override")


def dvc_overrides(variant_path: str) -> list[str]:
    """One `++key=value` per leaf of the variant: add or override, so new keys work too."""
    data = load_yaml(variant_path)
    return [f"++{k}={_hydra_value(v)}" for k, v in flatten(data).items()]


def _params_cmd(args: argparse.Namespace) -> int:
    if args.action == "dvc-args":
        load_params(["params.yaml", args.variant])  # refuse a variant that does not validate
        print(" ".join(f"-S {shlex.quote(o)}" for o in dvc_overrides(args.variant)))
        return 0
    params = load_params(args.params)
    if args.action == "check":
        print(f"{' + '.join(args.params)}: ok")
        return 0
    data: Any = params.model_dump(mode="json")
    if args.key:
        for part in args.key.split("."):
            if not isinstance(data, dict) or part not in data:
                raise PipelineError(f"{args.key}: no such key in the merged params")
            data = data[part]
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def _exp_run(args: argparse.Namespace) -> int:
    load_params(["params.yaml", args.variant])
    dvc = shutil.which("dvc") or "dvc"
    cmd = [dvc, "exp", "run"]
    for o in dvc_overrides(args.variant):
        cmd += ["-S", o]
    cmd += list(args.dvc_args)
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    return subprocess.call(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="arcpipe", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("params", help="check, show or translate params files")
    pp.add_argument("action", choices=["check", "show", "dvc-args"])
    pp.add_argument("variant", nargs="?", help="variant file (dvc-args)")
    pp.add_argument("--params", nargs="+", default=["params.yaml"], metavar="FILE")
    pp.add_argument("--key", default=None)
    pe = sub.add_parser("exp-run", help="dvc exp run with a variant's values as -S overrides")
    pe.add_argument("variant")
    pe.add_argument("dvc_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    try:
        if args.cmd == "params":
            if args.action == "dvc-args" and not args.variant:
                raise PipelineError("params dvc-args: name a variant file, e.g. params/sample_large.yaml")
            return _params_cmd(args)
        return _exp_run(args)
    except PipelineError as e:
        print(f"arcpipe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
