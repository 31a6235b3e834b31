# Shared by every rule file, to validate the merged config up front and hand it to the stage
# scripts as one content-addressed file, so `--configfile params/<variant>.yaml` and
# `--config key=value` reach the scripts exactly as Snakemake merged them.
import os
import sys

from snakemake.exceptions import WorkflowError

from arcpipe.params import ParamsError, validate
from arcpipe.photos import SAMPLE_PHOTOS  # the download stage's sets the sample is made from
from arcpipe.runner import write_params_snapshot
from arcpipe.stages.code import stage_code  # the code each rule runs (an input, so code changes rerun it)

try:
    PARAMS = validate(config, default="config (params.yaml + --configfile/--config)")
except ParamsError as e:
    raise WorkflowError(str(e)) from None


PARAMS_FILE = write_params_snapshot(config)
PY = sys.executable  # the interpreter running Snakemake, which has arcpipe (imported above)
# The rules' shell commands take both from the environment ($ARCPIPE_PYTHON, $ARCPIPE_PARAMS), which
# every job inherits (a SLURM job too: the profile exports the environment, and the job's own
# Snakemake sets them again). Neither is a param of a stage: the snapshot is named by its content,
# so it changes with any variant, while each rule reruns on its own sections alone (section_input).
os.environ.update(ARCPIPE_PYTHON=PY, ARCPIPE_PARAMS=PARAMS_FILE)
DATASETS = sorted(PARAMS.detect.datasets)



def train_resources(section):
    """What a train section's job asks of the scheduler. One node: its GPUs (train.processes when
    the device is cuda). Several: one task per node, which the rule's shell starts with srun
    (`mpi`: the SLURM plugin then leaves the launching to the shell), each node's GPUs as gres."""
    p = getattr(PARAMS, section)
    cuda = p.device.startswith("cuda")
    if p.nodes == 1:
        return {"gpu": p.processes if cuda else 0}
    res = {"nodes": p.nodes, "tasks": p.nodes, "tasks_per_gpu": 0, "mpi": "srun"}
    if cuda:
        res["gres"] = f"gpu:{p.processes}"
    return res


def train_launcher(section):
    """The shell's prefix: across nodes, one `python scripts/<stage>.py` per node (it starts that
    node's torchrun, which meets the others at the c10d rendezvous on the first node)."""
    p = getattr(PARAMS, section)
    return "" if p.nodes == 1 else f"srun --nodes {p.nodes} --ntasks-per-node 1 "

# Under --executor slurm, a partition the cluster lacks (a typo in ARCPIPE_SLURM_PARTITION, a
# profile from another site) stops the run here in one line, before any job is submitted, instead
# of as one sbatch error per job and attempt. Only the main process runs onstart (jobs get
# --no-hooks), and never in a dry run.
onstart:
    if getattr(workflow.executor_plugin, "cli_prefix", None) == "slurm":
        from arcpipe.slurm import partition_problem

        problem = partition_problem((j.rule.name, j.resources.get("slurm_partition"))
                                    for j in workflow.dag.needrun_jobs() if not j.is_local)
        if problem:
            raise WorkflowError(problem)

# Provenance across engines. Snakemake reruns a job when an input is newer than its outputs (or
# its own metadata says params changed), but it has no metadata for outputs that `dvc repro`
# built, so a variant run after DVC would find "Nothing to be done". Every rule therefore takes
# one more input, .snakemake/arcpipe/sections/<stage>.json: the values of the params that
# dvc.yaml's stage tracks (one source of truth: dvc.yaml, resolved against the merged config),
# rewritten only when its content changes, so its mtime marks the last params change.
# When the stage's outputs were built by something other than Snakemake (no Snakemake record
# whose endtime matches their mtime), it asks dvc.lock: outputs whose hashes are the ones
# dvc.lock records for the stage, built with the current values and the current code, are up
# to date (the file gets an old mtime, and Snakemake forgets its records of the builds they
# replaced); otherwise the file records the foreign build ("foreign_build", a signature of the
# outputs' stat) and is rewritten, which reruns the job.
import hashlib
import json
import os
import re
import stat as _stat
from functools import cache

import yaml
from snakemake.io import IOFile

SECTIONS_DIR = os.path.join(".snakemake", "arcpipe", "sections")
_MD5_CACHE_FILE = os.path.join(".snakemake", "arcpipe", "md5.json")
_REF = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
_MISSING = "<not in config>"


def _lookup(ctx, dotted):
    node = ctx
    for part in dotted.split("."):
        node = node[part]
    return node


def _interp(value, ctx):
    """dvc.yaml's ${a.b} interpolation (the forms this dvc.yaml uses), against `ctx`."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:
            return _lookup(ctx, whole.group(1))
        return _REF.sub(lambda m: str(_lookup(ctx, m.group(1))), value)
    if isinstance(value, list):
        return [_interp(v, ctx) for v in value]
    if isinstance(value, dict):
        return {_interp(k, ctx): _interp(v, ctx) for k, v in value.items()}
    return value


def _stage_spec(body, ctx):
    keys = []
    for p in body.get("params") or []:
        if isinstance(p, str):
            keys.append(_interp(p, ctx))
        elif isinstance(p, dict):  # {file: [keys]}: only params.yaml is Snakemake's config
            listed = p.get("params.yaml") or []
            keys.extend(_interp(k, ctx) for k in ([listed] if isinstance(listed, str) else listed))
    outs = []
    for section in ("outs", "metrics", "plots"):
        for o in body.get(section) or []:
            path, opts = (o, {}) if isinstance(o, str) else next(iter(o.items()))
            if not (opts or {}).get("persist"):  # persistent outputs (checkpoints) are not Snakemake outputs
                outs.append(str(_interp(path, ctx)).rstrip("/"))
    code = []  # the stage's scripts and package code, the deps that Snakemake's code inputs mirror
    for d in body.get("deps") or []:
        d = str(_interp(d, ctx)).rstrip("/")
        if d.startswith(("scripts/", "src/")):
            code.append(d)
    return {"params": keys, "outs": outs, "code": code}


@cache
def dvc_stage_specs():
    """dvc.yaml's stages as this config resolves them: {name (foreach: name@key): {params, outs}}."""
    with open("dvc.yaml") as f:
        doc = yaml.safe_load(f) or {}
    specs = {}
    for name, st in (doc.get("stages") or {}).items():
        if "foreach" in st:
            items = _interp(st["foreach"], config)
            pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
            for key, item in pairs:
                specs[f"{name}@{key}"] = _stage_spec(st["do"], {**config, "key": key, "item": item})
        else:
            specs[name] = _stage_spec(st, config)
    return specs


@cache
def _dvc_lock():
    try:
        with open("dvc.lock") as f:
            return (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return {}


def _canon(value):
    return json.dumps(value, sort_keys=True, default=str)


@cache
def _dvcignore():
    """.dvcignore as DVC reads it (git's wildmatch patterns, through pathspec as DVC does)."""
    import pathspec

    try:
        with open(".dvcignore") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(path, is_dir):
    rel = os.path.normpath(path).replace(os.sep, "/")
    return _dvcignore().match_file(f"{rel}/" if is_dir else rel)


def _files(path):
    """(relpath, path) of every file of an output, as DVC walks a directory (.dvcignore applied)."""
    if not os.path.isdir(path):
        return [("", path)]
    found = []
    for d, dirs, names in os.walk(path):
        dirs[:] = [x for x in dirs if not _ignored(os.path.join(d, x), True)]
        found.extend((os.path.relpath(os.path.join(d, n), path).replace(os.sep, "/"), os.path.join(d, n))
                     for n in names if not _ignored(os.path.join(d, n), False))
    return sorted(found)


_MD5 = {"known": None, "dirty": False}


def _md5_cache():
    if _MD5["known"] is None:
        try:
            with open(_MD5_CACHE_FILE) as f:
                _MD5["known"] = json.load(f)
        except (OSError, ValueError):
            _MD5["known"] = {}
    return _MD5["known"]


def _md5(path):
    """A file's md5 (DVC's "md5" hash), remembered per (size, mtime, inode) like DVC's state db."""
    st = os.stat(path)
    sig = [st.st_size, st.st_mtime_ns, st.st_ino]
    known = _md5_cache().get(path)
    if known and known[:3] == sig:
        return known[3]
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    _md5_cache()[path] = [*sig, h.hexdigest()]
    _MD5["dirty"] = True
    return h.hexdigest()


def _save_md5_cache():
    if _MD5["dirty"]:
        os.makedirs(os.path.dirname(_MD5_CACHE_FILE), exist_ok=True)
        tmp = f"{_MD5_CACHE_FILE}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_md5_cache(), f)
        os.replace(tmp, _MD5_CACHE_FILE)
        _MD5["dirty"] = False


def _matches_lock(recorded, paths):
    """Whether the files or folders are, byte for byte, the ones dvc.lock records (outs or deps)."""
    locked = {}
    for o in recorded or []:
        locked[str(o.get("path", "")).rstrip("/")] = o
    try:
        for path in paths:
            o = locked.get(path)
            if not o or o.get("hash") != "md5" or not o.get("md5"):
                return False  # not locked, or DVC 2's md5-dos2unix
            files = _files(path)
            if o["md5"].endswith(".dir") != os.path.isdir(path):
                return False
            if o.get("size") is not None and sum(os.path.getsize(p) for _, p in files) != o["size"]:
                return False
            if o["md5"].endswith(".dir"):
                if o.get("nfiles") is not None and len(files) != o["nfiles"]:
                    return False
                listing = json.dumps([{"md5": _md5(p), "relpath": rel} for rel, p in files], sort_keys=True)
                got = hashlib.md5(listing.encode()).hexdigest() + ".dir"
            else:
                got = _md5(path)
            if got != o["md5"]:
                return False
        return True
    except OSError:
        return False
    finally:
        _save_md5_cache()


def _snakemake_mtime(path):
    """The mtime Snakemake records as an output's endtime (a directory: its .snakemake_timestamp)."""
    st = os.lstat(path)
    if _stat.S_ISDIR(st.st_mode):
        try:
            return os.stat(os.path.join(path, ".snakemake_timestamp")).st_mtime
        except FileNotFoundError:
            pass
    return st.st_mtime


def _built_by_snakemake(outs):
    """Every output is as Snakemake's own record of the job that wrote it left it."""
    persistence = getattr(workflow, "persistence", None)
    if persistence is None:
        return False
    for path in outs:
        try:
            rec = persistence.metadata(IOFile(path))
            end = rec.get("endtime") if rec else None
            if end is None or abs(float(end) - _snakemake_mtime(path)) > 1e-6:
                return False
        except Exception:  # another Snakemake's metadata layout: not vouched for
            return False
    return True


def _forget_replaced(outs):
    """Drop Snakemake's records of builds that DVC has since replaced (what
    `snakemake --cleanup-metadata` does), so their params do not rerun DVC's up-to-date outputs."""
    persistence = getattr(workflow, "persistence", None)
    for path in outs:
        try:
            if persistence is not None and persistence.metadata(IOFile(path)):
                persistence.cleanup_metadata(IOFile(path))
        except Exception:
            pass


def _signature(outs):
    sig = hashlib.sha256()
    for path in outs:
        for rel, p in _files(path):
            st = os.lstat(p)
            sig.update(f"{path}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    return sig.hexdigest()[:16]


def _section_file(stage):
    spec = dvc_stage_specs().get(stage)
    if spec is None:
        raise WorkflowError(f"section_input: dvc.yaml has no stage {stage!r}")
    values = {}
    for key in spec["params"]:
        try:
            values[key] = _lookup(config, key)
        except (KeyError, TypeError):
            values[key] = _MISSING
    path = os.path.join(SECTIONS_DIR, f"{stage}.json")
    if not getattr(workflow, "is_main_process", True) and os.path.exists(path):
        # A job's own Snakemake (a SLURM job, a group or subprocess job) reads what the main process
        # decided. Deciding again would race it: a job finished a moment ago has outputs but no
        # record yet, so it would look foreign and its file be rewritten, rerunning it next time.
        return path
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    marker = (old or {}).get("foreign_build")
    outs = spec["outs"]
    up_to_date = False  # outputs DVC built with these values: nothing to rerun
    if outs and all(os.path.lexists(p) for p in outs) and not _built_by_snakemake(outs):
        entry = _dvc_lock().get(stage) or {}
        locked = (entry.get("params") or {}).get("params.yaml")
        if (locked is not None and _canon(locked) == _canon(values)
                and _matches_lock(entry.get("outs"), outs) and _matches_lock(entry.get("deps"), spec["code"])):
            up_to_date = True
            _forget_replaced(outs)
        else:
            marker = _signature(outs)  # neither engine vouches for these outputs with these values
    new = {"stage": stage, "params": values, "foreign_build": marker}
    if _canon(new) != _canon(old):
        os.makedirs(SECTIONS_DIR, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(new, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    if up_to_date and os.path.getmtime(path) > 0:
        os.utime(path, (0, 0))
    return path


@cache
def _section_files():
    """All stages' files at once, on the first call (the DAG is being built, Snakemake's records are
    open): Snakemake lists a folder once per run to see which inputs exist, so none may appear later."""
    return {stage: _section_file(stage) for stage in dvc_stage_specs()}


def section_input(stage):
    """The input that reruns a rule when the params its dvc.yaml stage tracks change, whichever
    engine built the outputs (a foreach stage: one file per dataset, `stage@dataset`)."""
    foreach = any(name.startswith(f"{stage}@") for name in dvc_stage_specs())

    def sections(wildcards):
        return _section_files()[f"{stage}@{wildcards.dataset}" if foreach else stage]

    return sections
