"""The data stages on a real (one-node) SLURM cluster through `snakemake --profile
profiles/slurm`: sample -> detect -> align -> pack / evalpack on the embedded sample, with
detect and align in 2 shards (one SLURM job each), end with the bytes of a local `snakemake
--cores 2` of the same targets; a shard that fails is resubmitted alone (retries), and once
fixed, the next run reruns that shard and what depends on it, never its sibling.

The cluster (tests/slurm_cluster.py) is munged + slurmctld + slurmd started here, everything in a
temporary folder, stopped pid by pid at the end. Needs Debian's `slurm-wlm munge` and root; skips
without them, fails instead under CI=true. Takes several minutes on 2 cores.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import in_ci
from slurm_cluster import PARTITION, SlurmCluster, missing_binaries
from worktree import copy_worktree

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = ["pack", "evalpack"]
# detect and align in 2 shards; one worker each, so the node's 2 CPUs run 2 jobs at once
SHARDED = {"detect": {"shards": 2, "workers": 1}, "align": {"shards": 2, "workers": 1}}
# the fault: the stage log of align's shard 1 of each data set is a folder, so every align
# shard-1 job fails (its logger cannot open the file) and nothing else does
DATASETS = sorted(yaml.safe_load((REPO / "params.yaml").read_text())["detect"]["datasets"])
POISON = [f"logs/align.{d}.shard001of002.log" for d in DATASETS]


def _unavailable() -> str | None:
    missing = missing_binaries()
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as SlurmUser=root: run as root"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"
    return None


def _require_slurm() -> None:
    reason = _unavailable()
    if reason:
        pytest.fail(f"slurm test could not run under CI=true: {reason}") if in_ci() else pytest.skip(reason)


def _copy_repo(dst: Path) -> Path:
    """The work tree as a clone of it would be, with the sharded variant beside params.yaml."""
    copy_worktree(dst)
    (dst / "sharded.yaml").write_text(yaml.safe_dump(SHARDED))
    return dst


def _env(root: Path, base: dict | None = None) -> dict:
    env = dict(base or os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(root / "src"), TQDM_DISABLE="1")
    for var in ("ARCPIPE_SLURM_ACCOUNT", "ARCPIPE_SLURM_PARTITION", "ARCPIPE_SLURM_GPU_PARTITION"):
        env.pop(var, None)
    return env


def _snakemake(root: Path, args: list[str], env: dict, timeout: float = 1200) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "snakemake", *TARGETS, "--configfile", "sharded.yaml", *args],
                       cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def _job_stats(log: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints: {rule: count}."""
    block = log.split("Job stats:\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = dict((line.split()[0], int(line.split()[1])) for line in block if line.strip())
    rows.pop("total", None)
    return rows


def _mtime_stamped(rel: str) -> bool:
    """detect's listing and its parts carry, in their parquet metadata, a digest of the source
    files' sizes and mtimes (so a rewritten image is listed again): two runs that each made the
    sample differ there by design. Their rows must still be equal."""
    return rel.startswith("data/detect/") and (rel.endswith("/listing.parquet") or "/parts/" in rel)


def _download_state(rel: str) -> bool:
    """download's NAME/FILE.state.json records the mtime of the file it vouches for: machine-local
    bookkeeping (in .dvcignore, so no output hash counts it) that two runs write differently."""
    return rel.startswith("data/download/") and rel.endswith(".state.json")


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under data/ (the rows only, for the mtime-stamped parquet files; not
    download's state files)."""
    out = {}
    for p in sorted((root / "data").rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if _download_state(rel):
                continue
            if _mtime_stamped(rel):
                table = pq.read_table(p).replace_schema_metadata(None)
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
                out[rel] = "rows:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _processes_of_job(job: str) -> list[int]:
    """The pids of Slurm job `job` on this host: its slurmstepd processes and all below them."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    roots = {pid for pid, c in cmd.items() if c.startswith("slurmstepd") and f"[{job}." in c}
    found = set(roots)
    grew = True
    while grew:
        below = {pid for pid, pp in parent.items() if pp in found} - found
        found |= below
        grew = bool(below)
    return sorted(found)


def _down_the_node_under_a_shard(cluster: SlurmCluster, rule: str, downed: dict, timeout: float = 900) -> None:
    """As a node dying: once a job of `rule` has run for a moment, the node goes DOWN and every
    process of that job is killed (a dead node's processes are gone, whatever slurmd would do);
    ReturnToService=2 lets the node back once its slurmd registers again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i %k"], env=cluster.env,
                           capture_output=True, text=True).stdout
        running = [line.split(maxsplit=1) for line in q.splitlines() if " " in line.strip()]
        mine = [job for job, comment in running if comment.startswith(f"{rule}_")]
        if mine:
            time.sleep(2)
            pids = _processes_of_job(mine[0])
            subprocess.run(["scontrol", "update", f"nodename={cluster.node}", "state=down",
                            "reason=arcpipe test: the node died"], env=cluster.env, check=True)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            downed.update(job=mine[0], pids=str(len(pids)))
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    _require_slurm()
    root = _copy_repo(tmp_path_factory.mktemp("local"))
    code, log, seconds = _snakemake(root, ["--cores", "2", "--rerun-triggers", "input", "params", "code"],
                                    _env(root))
    assert code == 0, log[-4000:]
    return root, log, seconds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require_slurm()
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def test_a_partition_the_cluster_lacks_stops_the_run_in_one_line_before_any_submission(tmp_path, cluster):
    """A typo in the site's partition (or a profile from another cluster): one line naming the
    partition, the rules and the setting to change, and the cluster's partitions; no job submitted,
    nothing written under data/. The GPU partition of the trainings is checked the same way."""
    root = _copy_repo(tmp_path / "repo")
    for setting, targets in (("ARCPIPE_SLURM_PARTITION", TARGETS), ("ARCPIPE_SLURM_GPU_PARTITION", ["train"])):
        env = _env(root, cluster.env)
        env[setting] = "nosuchq"
        r = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--profile", "profiles/slurm"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=600)
        log = r.stdout + r.stderr
        assert r.returncode != 0, log[-3000:]
        lines = [ln for ln in log.splitlines() if "SLURM partition 'nosuchq' does not exist" in ln]
        assert len(lines) == 1, log[-3000:]
        assert setting in lines[0] and f"one of: {PARTITION}" in lines[0], lines[0]
        if setting.endswith("GPU_PARTITION"):
            assert "rule train_bootstrap, train;" in lines[0] or "rule train, train_bootstrap;" in lines[0], lines[0]
        assert "has been submitted" not in log and "sbatch" not in log, log[-3000:]
        assert not (root / "data").exists()
    queue = subprocess.run(["squeue", "--noheader"], env=cluster.env, capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""


def test_data_stages_on_slurm_match_a_local_run(tmp_path, local_run, cluster):
    local, local_log, local_s = local_run
    root = _copy_repo(tmp_path / "repo")
    env = _env(root, cluster.env)
    env["ARCPIPE_SLURM_PARTITION"] = PARTITION  # the site's partition, as a user sets it
    # status checks every few seconds instead of the plugin's 40 s; squeue (no accounting here)
    fast = ["--jobs", "4", "--slurm-init-seconds-before-status-checks", "2", "--slurm-status-command", "squeue",
            "--latency-wait", "5", "--retries", "1"]
    args = ["--profile", "profiles/slurm", *fast]
    for p in POISON:
        (root / p).mkdir(parents=True)

    t0 = time.monotonic()
    code, log1, s1 = _snakemake(root, args, env)
    assert code != 0, "the poisoned shard did not fail:\n" + log1[-3000:]
    assert _job_stats(log1) == _job_stats(local_log), "the SLURM run planned other jobs than the local run"
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log1)
    # .snakemake/slurm_logs/rule_<rule>[/<wildcards>]/<id>.log
    rules = [next(part for part in Path(p).parts if part.startswith("rule_")) for _, p in submitted]
    assert rules.count("rule_detect_part") == 10 and rules.count("rule_align_part") == 5 * 2 + 5, rules
    assert rules.count("rule_sample") == 1 and "rule_align" not in rules and "rule_pack" not in rules
    # retries: each failing shard 1 was submitted again, alone; each shard 0 once
    tries = Counter(Path(p).parts[-2] for _, p in submitted if Path(p).parts[-3] == "rule_align_part")
    assert sorted(tries.values()) == [1] * 5 + [2] * 5 and all(("00001" in w) == (n == 2) for w, n in tries.items()), tries
    parts = sorted((root / "data" / "align").glob("*/parts/part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000-of-00002.parquet"] * 5  # shard 1 failed, shard 0 kept
    kept = {p: p.stat().st_mtime_ns for p in (root / "data").rglob("*") if p.is_file()}

    for p in POISON:
        (root / p).rmdir()
    code, plan, _ = _snakemake(root, [*args, "--dry-run"], env)
    assert code == 0, plan[-3000:]
    assert _job_stats(plan) == {"align_part": 5, "align": 5, "pack": 1, "evalpack": 1}, plan[-3000:]
    # the node dies under a shard of the rerun: Slurm requeues that job (the profile submits with
    # --requeue), it runs again from the start and the run ends as if nothing had happened
    downed: dict[str, str] = {}
    killer = threading.Thread(target=_down_the_node_under_a_shard, args=(cluster, "rule_align_part", downed),
                              daemon=True)
    killer.start()
    code, log2, s2 = _snakemake(root, args, env)
    killer.join(timeout=5)
    assert code == 0, log2[-4000:] + "\n" + cluster.logs()
    assert downed.get("job") and int(downed["pids"]) > 0, f"no align shard was seen running, to take its node down: {downed}"
    show = subprocess.run(["scontrol", "show", "job", downed["job"]], env=cluster.env, capture_output=True,
                          text=True, check=True).stdout
    assert "JobState=COMPLETED" in show and "Restarts=1" in show, show
    total = time.monotonic() - t0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a finished job's output was rewritten"

    ours, theirs = _files(root), _files(local)
    assert sorted(ours) == sorted(theirs)
    differ = [f for f in ours if ours[f] != theirs[f]]
    assert not differ, differ
    print(f"\nlocal snakemake --cores 2: {local_s:.0f} s; SLURM: failing run {s1:.0f} s, rerun {s2:.0f} s, "
          f"{total:.0f} s with the dry run; {len(submitted)} + {log2.count('has been submitted')} jobs submitted")
