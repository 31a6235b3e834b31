"""What every stage script shares: arguments, params, logging, shards, summary, exit codes.

A stage script is thin:

    from arcpipe.runner import run_stage

    def body(ctx):            # ctx: StageContext
        ...                   # read ctx.params.<section>, write outputs atomically
        return {"in": n, "out": m, "rejected": {...}}   # the summary

    if __name__ == "__main__":
        raise SystemExit(run_stage("detect", body))

`python scripts/<stage>.py [--params params.yaml [variant.yaml ...]] [--shard I/K] [--workers N]`
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import PipelineError
from .fsutil import digest_of, write_json_atomic
from .params import Params, load_params, origin_of

log = logging.getLogger("arcpipe")


def available_cpus() -> int:
    """CPUs this process may use (cgroup/SLURM affinity aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i_s, k_s = text.split("/")
        i, k = int(i_s), int(k_s)
    except ValueError:
        raise PipelineError(f"--shard {text!r}: expected I/K, for example 0/4") from None
    if k < 1 or not 0 <= i < k:
        raise PipelineError(f"--shard {text}: shard index {i} is out of range for {k} shards (0..{k - 1})")
    return i, k


@dataclass
class StageContext:
    name: str
    params: Params
    params_files: list[str]
    shard: Optional[tuple[int, int]]
    workers: int
    args: argparse.Namespace
    log: logging.Logger
    started: float = field(default_factory=time.time)
    current: str = ""  # what the stage is working on: named in the error line if something unexpected fails

    def params_digest(self) -> str:
        return digest_of(self.params.model_dump(mode="json"))

    def section_digest(self) -> str:
        """The digest of this stage's own params section (all the params for a stage without one):
        what a summary records, so that an output does not change with params its stage never reads."""
        section = getattr(self.params, self.name, None)
        return digest_of(section.model_dump(mode="json")) if section is not None else self.params_digest()

    @contextlib.contextmanager
    def working_on(self, what: str) -> Iterator[None]:
        """Name the item in hand (a data set, a part, a benchmark) for the error line of an
        unexpected failure; nests ("data set train, part 3/8")."""
        outer = self.current
        self.current = f"{outer}, {what}" if outer else what
        try:
            yield
        except Exception as e:
            if not hasattr(e, "arcpipe_where"):  # the innermost item, as it was when it failed
                try:
                    e.arcpipe_where = self.current
                except AttributeError:  # pragma: no cover - exceptions with __slots__
                    pass
            raise
        finally:
            self.current = outer

    def require_path(self, key: str, path: str | os.PathLike) -> Path:
        """An input path named by params key `key` must exist: one line naming both otherwise."""
        p = Path(path)
        if not p.exists():
            raise PipelineError(f"{origin_of(key, self.params_files)}: {key}: input path '{p}' does not exist")
        return p

    def shard_count(self, configured: int) -> int:
        """Check --shard K against the params' shard count and return the count in force."""
        if self.shard is not None and self.shard[1] != configured:
            raise PipelineError(
                f"--shard {self.shard[0]}/{self.shard[1]}: params say {self.name}.shards = {configured}"
            )
        return configured

    def summary_record(self, counts: dict[str, Any]) -> dict[str, Any]:
        """The summary an output folder carries: counts and the digest of the stage's params section,
        no wall-clock time (the same inputs give the same bytes; timings go to logs/timings.jsonl)."""
        return {
            "stage": self.name,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "params_sha256_16": self.section_digest(),
            **counts,
        }

    def write_summary(self, path: str | os.PathLike, counts: dict[str, Any]) -> dict[str, Any]:
        rec = self.summary_record(counts)
        write_json_atomic(path, rec)
        return rec


def setup_logging(name: str, log_dir: str | os.PathLike = "logs", shard: Optional[tuple[int, int]] = None,
                  dataset: Optional[str] = None) -> logging.Logger:
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"arcpipe.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    fh = logging.FileHandler(_log_path(name, shard, str(log_dir), dataset), mode="a", encoding="utf-8")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    logger.addHandler(fh)
    logger.addHandler(sh)
    return logger


def build_parser(name: str, description: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"scripts/{name}.py", description=description)
    p.add_argument("--params", nargs="+", default=["params.yaml"], metavar="FILE",
                   help="params.yaml, then variants merged over it in order (default: params.yaml)")
    p.add_argument("--shard", default=None, metavar="I/K", help="run shard I of K only")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: the section's `workers`, at most the CPUs available)")
    return p


def run_stage(
    name: str,
    body: Callable[[StageContext], dict[str, Any]],
    argv: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> int:
    """Parse, validate params, run `body`, log the summary as the last line. Returns the exit code."""
    parser = build_parser(name, description)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        shard = parse_shard(args.shard) if args.shard else None
        params = load_params(args.params)
    except PipelineError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    dataset = getattr(args, "dataset", None)  # the data set stages' --dataset: one log per set and shard
    logger = setup_logging(name, shard=shard, dataset=dataset)
    section = getattr(params, name.split("_")[0], None)
    configured = getattr(section, "workers", None)
    workers = args.workers if args.workers is not None else (configured or 1)
    if workers < 1:
        print(f"{name}: error: --workers {workers}: expected at least 1", file=sys.stderr)
        return 2
    workers = min(workers, available_cpus())
    ctx = StageContext(name, params, [str(p) for p in args.params], shard, workers, args, logger)
    logger.info("start: params %s (sha256 %s), shard %s, workers %d",
                " + ".join(ctx.params_files), ctx.params_digest(), args.shard or "all", workers)
    code = 0
    try:
        counts = body(ctx)
    except PipelineError as e:
        logger.error("error: %s", e)
        code = 2
    except KeyboardInterrupt:
        logger.error("interrupted; finished outputs are kept, unfinished ones were not written")
        code = 130
    except Exception as e:  # a bug or an input nobody foresaw: one line here, the traceback in the log
        where = ", ".join(w for w in (getattr(e, "arcpipe_where", ctx.current), getattr(e, "item", "")) if w)
        where = f" while working on {where}" if where else ""
        e = getattr(e, "cause", e)
        _to_file(logger, logging.ERROR, "unexpected error%s:\n%s", where, traceback.format_exc())
        msg = " ".join(str(e).split()) or "(no message)"
        print(f"{name}: error: unexpected {type(e).__name__}{where}: {msg[:300]} "
              f"(traceback in {_log_path(name, shard, dataset=dataset)}; nothing half-written was left)",
              file=sys.stderr)
        code = 1
    seconds = round(time.time() - ctx.started, 3)
    _record_timing(ctx, seconds, code)
    if code:
        return code
    rec = {**ctx.summary_record(counts or {}), "seconds": seconds}
    logger.info("summary: %s", json.dumps(rec, sort_keys=True, default=str))
    return 0


def _log_path(name: str, shard: Optional[tuple[int, int]], log_dir: str = "logs",
              dataset: Optional[str] = None) -> Path:
    """logs/<stage>[.<dataset>][.shardIIIofKKK].log: the jobs that may run at once never share a file."""
    stem = name if not dataset else f"{name}.{dataset}"
    suffix = "" if shard is None else f".shard{shard[0]:03d}of{shard[1]:03d}"
    return Path(log_dir) / f"{stem}{suffix}.log"


def _to_file(logger: logging.Logger, level: int, msg: str, *args) -> None:
    """Log to the stage's log file only (a traceback is for the file, not the terminal)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, msg, args, None)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def _record_timing(ctx: StageContext, seconds: float, code: int, log_dir: str = "logs") -> None:
    """One JSON line per stage run in logs/timings.jsonl: kept out of the outputs DVC hashes."""
    rec = {"stage": ctx.name, "args": {k: v for k, v in vars(ctx.args).items() if k not in ("params",) and v},
           "shard": None if ctx.shard is None else f"{ctx.shard[0]}/{ctx.shard[1]}", "workers": ctx.workers,
           "seconds": seconds, "exit": code, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with open(Path(log_dir) / "timings.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
    except OSError:  # pragma: no cover - timings are a convenience
        pass


def write_params_snapshot(merged: dict, out_dir: str | os.PathLike = ".snakemake/arcpipe") -> str:
    """Write already-merged params to one content-addressed file and return its path.

    Snakemake merges params.yaml, --configfile variants and --config itself; its rules hand the
    stage scripts this one file, so the scripts see exactly what Snakemake merged.
    """
    import yaml

    text = yaml.safe_dump(dict(merged), sort_keys=True)
    out = Path(out_dir) / f"params.{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, out)
    return str(out)
