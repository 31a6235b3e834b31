"""Read the DAG as each engine sees it: DVC's expanded stages and Snakemake's dry-run jobs."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path


def dvc_stages(root: Path) -> dict[str, dict]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out: dict[str, dict] = {}
    with Repo(str(root)) as repo:
        for s in repo.index.stages:
            if not getattr(s, "cmd", None):
                continue
            params: set[str] = set()
            deps: set[str] = set()
            for d in s.deps:
                if isinstance(d, ParamsDependency):
                    params |= set(d.params)
                else:
                    deps.add(str(d.def_path).rstrip("/"))
            out[s.addressing] = {
                "cmd": s.cmd,
                "deps": deps,
                "outs": {str(o.def_path).rstrip("/") for o in s.outs if not o.persist},
                "persist": {str(o.def_path).rstrip("/") for o in s.outs if o.persist},
                "params": params,
            }
    return out


def snakemake_jobs(root: Path, *extra: str) -> list[dict]:
    """Every job of a forced dry run: rule, wildcards, input, output, shell command."""
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-F", "-p", "--cores", "1", *extra],
        cwd=root, capture_output=True, text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed: {r.stderr.strip()[-2000:]}")
    jobs: list[dict] = []
    cur: dict | None = None
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            cur = {"rule": m.group(1), "input": [], "output": [], "wildcards": {}, "shell": None}
            jobs.append(cur)
            continue
        if cur is None:
            continue
        m = re.match(r"^    (input|output|wildcards): (.*)$", line)
        if m:
            key, val = m.groups()
            if key == "wildcards":
                cur["wildcards"] = dict(kv.split("=", 1) for kv in val.split(", "))
            else:
                cur[key] = [v.strip() for v in val.split(", ")]
            continue
        if line.startswith("Shell command: "):
            cmd = line[len("Shell command: "):]
            cur["shell"] = None if cmd == "None" else cmd
            cur = None
    return jobs


def script_call(cmd: str) -> tuple[str, tuple[str, ...]]:
    """(script, args without --params FILE... and --shard) of a stage command."""
    words = shlex.split(cmd.split("2>")[0].split(">")[0])
    script = next(w for w in words if w.startswith("scripts/") and w.endswith(".py"))
    args = words[words.index(script) + 1:]
    kept: list[str] = []
    skip = False
    for w in args:
        if w in ("--params", "--shard", "--workers"):
            skip = True
            continue
        if skip and not w.startswith("--"):
            continue
        skip = False
        kept.append(w)
    return script, tuple(kept)
