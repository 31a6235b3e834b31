"""The train stage across two nodes: two torchrun launchers (--nnodes 2 --nproc-per-node 1, c10d
rendezvous on 127.0.0.1, gloo on CPU), each started in a folder of its own as a node with its own
disk would be, train as one process with the same global batch does; a rendezvous that misses a
node, and a node that cannot see rank 0's checkpoints, end with an error, not a hang.

BatchNorm normalises each rank's share of the batch by that share's statistics (the paper's
setting, as in arcface_torch: no SyncBatchNorm), so two ranks of 4 images and one process of 8 end
with different weights by design. The comparison with one process runs the stage with BatchNorm
on its running statistics (a wrapper script, below); everything else, the sampler's split of the
global batch, DDP's gradient averaging, the head's class centres sharded over the ranks, is the
stage's own code. The slow test runs the stage as it ships and compares two nodes with one node of
two processes, bit for bit.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import in_ci
from test_train_stage import TINY, tiny_pack

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"

# scripts/train.py with BatchNorm normalising by its running statistics, never by the batch's
FROZEN_BN = '''\
import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _forward(self, x):
    return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                          False, 0.0, self.eps)


_BatchNorm.forward = _forward
from arcpipe.stages import main  # noqa: E402

raise SystemExit(main("train"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")


def _node(root: Path, name: str, pack: Path, **over) -> Path:
    """A node's working folder: the pack, and params with paths relative to it (as params.yaml's are)."""
    d = root / name
    d.mkdir()
    (d / "pack").symlink_to(pack)
    train = {**TINY, "epochs": 1, "export": ["torchscript"], "pack_dir": "pack", "out_dir": "models/train",
             "checkpoint_dir": "models/checkpoints", "live_dir": "dvclive", **over}
    (d / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    return d


def _launcher(script: Path, nnodes: int, port: int, rdzv_id: str, join_timeout: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
            "--rdzv-conf", f"join_timeout={join_timeout}", "--local-addr", "127.0.0.1",
            str(script), "--params", "params.yaml"]


def _run_nodes(nodes: list[Path], script: Path, rdzv_id: str, nnodes: int = 2, join_timeout: int = 60,
               bound_s: float = 150) -> list[tuple[int, str, float]]:
    """Start one launcher per node folder at once; (exit code, output, seconds) of each. A launcher
    still running after bound_s is killed with its workers and the test fails: a hang."""
    port = _free_port()
    t0 = time.monotonic()
    procs = [subprocess.Popen(_launcher(script, nnodes, port, rdzv_id, join_timeout), cwd=d, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for d in nodes]
    out = []
    try:
        for p in procs:
            left = max(1.0, bound_s - (time.monotonic() - t0))
            try:
                text, _ = p.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a launcher was still running after {bound_s:.0f} s (a hang)")
            out.append((p.returncode, text, time.monotonic() - t0))
    finally:
        for p in procs:
            if p.poll() is None:
                _stop_launcher(p)
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return kids


def _stop_launcher(p: subprocess.Popen) -> None:
    """SIGTERM the launcher (it stops its workers), then SIGKILL it and its workers, each by pid
    (torchrun starts every worker in a session of its own)."""
    workers = _children(p.pid)
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for w in workers:
        try:
            os.killpg(w, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _last_checkpoint(node: Path) -> dict:
    (ckpt, *_) = sorted(node.glob("models/checkpoints/*/step-*.pt"), reverse=True)
    return torch.load(ckpt, weights_only=False, map_location="cpu")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    tiny_pack(root)
    return root / "pack"


@pytest.fixture(scope="module")
def frozen_bn_nodes(tmp_path_factory, pack):
    """Two nodes (frozen BatchNorm), each in its own folder, after one complete run."""
    root = tmp_path_factory.mktemp("nodes")
    script = root / "frozen_bn_train.py"
    script.write_text(FROZEN_BN)
    nodes = [_node(root, "node0", pack), _node(root, "node1", pack)]
    results = _run_nodes(nodes, script, "frozen-bn")
    for rank, (code, text, _) in enumerate(results):
        assert code == 0, f"node {rank}:\n{text[-3000:]}"
    return root, script, nodes


def test_two_nodes_end_with_the_weights_of_one_process(frozen_bn_nodes, pack):
    root, script, (node0, node1) = frozen_bn_nodes
    one = _node(root, "one", pack)
    r = subprocess.run([sys.executable, str(script), "--params", "params.yaml"], cwd=one, env=_env(),
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]

    two, single = _last_checkpoint(node0), _last_checkpoint(one)
    assert two["step"] == single["step"] == 24 // 8  # one epoch of the same global batch
    assert two["definition"]["world_size"] == 2 and single["definition"]["world_size"] == 1
    assert two["backbone"].keys() == single["backbone"].keys()
    for k, v in single["backbone"].items():
        torch.testing.assert_close(two["backbone"][k], v, rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
    (earlier, *_) = sorted(one.glob("models/checkpoints/*/step-*.pt"))  # step 2: the last step moved the weights
    before = torch.load(earlier, weights_only=False, map_location="cpu")["backbone"]
    assert any((before[k] - v).abs().max() > 1e-3 for k, v in single["backbone"].items())
    # the head's class centres: split over the two ranks, whole in one process
    centres2 = np.load(node0 / "models" / "train" / "centres.npy")
    centres1 = np.load(one / "models" / "train" / "centres.npy")
    assert centres2.shape == centres1.shape == (4, 1, 32)
    np.testing.assert_allclose(centres2, centres1, rtol=1e-4, atol=2e-5)
    # rank 0 (global) alone wrote outputs; the other node has its rank's log only
    assert (node0 / "models" / "train" / "backbone.pt").is_file() and (node0 / "dvclive" / "metrics.json").is_file()
    assert not (node1 / "models").exists() and not (node1 / "dvclive").exists()
    assert (node1 / "logs" / "train.rank1.log").is_file()
    assert yaml.safe_load((node0 / "models" / "train" / "train.json").read_text())["world_size"] == 2


def test_a_node_that_cannot_see_the_checkpoints_stops_both(frozen_bn_nodes):
    """Run again, rank 0 finds its finished run's checkpoint; rank 1's node (its own disk) does not:
    both stop with the reason, instead of one resuming while the other starts over."""
    _, script, nodes = frozen_bn_nodes
    results = _run_nodes(nodes, script, "blind-node", bound_s=120)
    reason = "rank(s) 1 cannot read it: train.checkpoint_dir must be on a filesystem that every node shares"
    for code, _, seconds in results:
        assert code != 0 and seconds < 120
    assert reason in results[0][1]  # rank 0's terminal
    assert reason in (nodes[1] / "logs" / "train.rank1.log").read_text().splitlines()[-1]  # rank 1 logs to its file


def test_a_rendezvous_that_misses_a_node_times_out(tmp_path, pack):
    """One launcher of two: the c10d rendezvous gives up after join_timeout, non-zero, no worker run."""
    node = _node(tmp_path, "node0", pack)
    ((code, text, seconds),) = _run_nodes([node], TRAIN, "lonely", join_timeout=5, bound_s=90)
    assert code != 0
    assert seconds < 60, f"the rendezvous took {seconds:.0f} s to give up (join_timeout=5)"
    assert "RendezvousTimeoutError" in text
    assert not (node / "models").exists() and not (node / "logs").exists()


def test_the_stage_under_srun_says_in_one_line_that_the_rendezvous_timed_out(tmp_path, pack):
    """The stage as the Snakemake rule starts it on each node (srun, one task per node, train.nodes
    2), on one node of the two: the torchrun it starts gives up after train.rendezvous_timeout_s,
    and the stage's last line says so, naming the endpoint and the setting."""
    if shutil.which("scontrol") is None:
        if in_ci():
            pytest.fail("scontrol is missing under CI=true: apt-get install slurm-wlm")
        pytest.skip("scontrol (slurm-wlm) finds the allocation's first node")
    node = _node(tmp_path, "node0", pack, nodes=2, rendezvous_port=_free_port(), rendezvous_timeout_s=5)
    conf = tmp_path / "slurm.conf"  # scontrol show hostnames parses the node list; it needs a config
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\n"
                    "PartitionName=p Nodes=localhost Default=YES\n")
    env = dict(_env(), SLURM_CONF=str(conf), SLURM_NNODES="2", SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.1",
               SLURM_JOB_ID="4242")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(TRAIN), "--params", "params.yaml"], cwd=node, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stderr[-3000:]
    assert time.monotonic() - t0 < 90
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error: train: the c10d rendezvous at 127.0.0.1:") and \
        "did not gather train.nodes = 2 nodes within train.rendezvous_timeout_s = 5 s" in last, r.stderr[-3000:]
    assert "RendezvousTimeoutError" in r.stderr  # torchrun's own account stays above it
    assert not (node / "models" / "train").exists()


@pytest.mark.slow
def test_two_nodes_train_as_one_node_of_two_processes(tmp_path, pack):
    """The stage as it ships (per-rank BatchNorm): two nodes sharing one folder (a shared
    filesystem, as on a cluster) end bit for bit where one node of two processes ends; run again,
    both nodes resume the finished run and train nothing."""
    shared = _node(tmp_path, "shared", pack)
    results = _run_nodes([shared, shared], TRAIN, "shared-fs")
    for rank, (code, text, _) in enumerate(results):
        assert code == 0, f"node {rank}:\n{text[-3000:]}"
    one = _node(tmp_path, "one", pack)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TRAIN), "--params", "params.yaml"]
    r = subprocess.run(cmd, cwd=one, env=_env(), capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _last_checkpoint(shared), _last_checkpoint(one)
    assert a["step"] == b["step"] == 3 and a["backbone"].keys() == b["backbone"].keys()
    for k in a["backbone"]:
        assert torch.equal(a["backbone"][k], b["backbone"][k]), k
    for r0, r1 in zip(a["ranks"], b["ranks"]):
        assert torch.equal(r0["head"]["weight"], r1["head"]["weight"])
    info = (shared / "models" / "train" / "train.json").read_text()
    results = _run_nodes([shared, shared], TRAIN, "shared-fs-again")
    for rank, (code, text, _) in enumerate(results):
        assert code == 0, f"node {rank}:\n{text[-3000:]}"
    assert (shared / "logs" / "train.log").read_text().count(" resumed ") == 1  # rank 0, the second time
    assert (shared / "models" / "train" / "train.json").read_text() == info
