"""The train stage end to end on a tiny pack: outputs the evaluate stage reads, DVCLive metrics,
checkpoints that resume bit for bit after a SIGKILL, refused foreign checkpoints, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from arcpipe.stages import main
from test_pack import make_aligned

REPO = Path(__file__).resolve().parents[1]

TINY = {"backbone": {"name": "r18", "embedding_size": 32, "width": 0.125, "layers": [1, 1, 1, 1]},
        "head": {"kind": "arcface", "s": 16.0, "m1": 1.0, "m2": 0.3, "m3": 0.0},
        "batch_size": 8, "epochs": 2, "workers": 0, "checkpoint_every": 2, "log_every": 1,
        "verify_every": 100, "lr": 0.05, "schedule": {"kind": "poly", "warmup_steps": 2}}


def tiny_pack(root: Path, identities: int = 4, per: int = 6, flat: bool = False) -> Path:
    rows = [(f"id{i}/{j}.jpg", f"id{i}", "ok") for i in range(identities) for j in range(per)]
    make_aligned(root / "align" / "train", rows)
    (root / "p.yaml").write_text(yaml.safe_dump({"align": {"out_dir": str(root / "align")},
                                                 "pack": {"dataset": "train", "out_dir": str(root / "pack"),
                                                          "flat_shuffled": flat}}))
    assert main("pack", ["--params", str(root / "p.yaml")]) == 0
    return root / "pack"


def write_params(root: Path, **over) -> Path:
    train = {**TINY, "pack_dir": str(root / "pack"), "out_dir": str(root / "models" / "train"),
             "checkpoint_dir": str(root / "models" / "checkpoints"), "live_dir": str(root / "dvclive")}
    for k, v in over.items():
        train[k] = {**train[k], **v} if isinstance(v, dict) and isinstance(train.get(k), dict) else v
    p = root / "params.yaml"
    p.write_text(yaml.safe_dump({"train": train}))
    return p


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    tiny_pack(root)
    return root / "pack"


def _setup(tmp_path, monkeypatch, pack) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pack").symlink_to(pack)
    return tmp_path


def test_train_writes_what_evaluate_reads(tmp_path, monkeypatch, pack):
    root = _setup(tmp_path, monkeypatch, pack)
    params = write_params(root)
    assert main("train", ["--params", str(params)]) == 0
    out = root / "models" / "train"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["backbone.json", "backbone.onnx", "backbone.pt", "centres.npy", "train.json",
                     "untrained.json", "untrained.onnx", "untrained.pt"]
    info = json.loads((out / "train.json").read_text())
    centres = np.load(out / "centres.npy")  # (classes, sub-centres, dim) unit rows, for cleaning
    assert centres.shape == (4, 1, 32) == tuple(info["centres"]["shape"])
    assert np.allclose(np.linalg.norm(centres, axis=-1), 1, atol=1e-5)
    assert info["steps"] == info["total_steps"] == 2 * (24 // 8) and info["num_classes"] == 4
    assert [h["step"] for h in info["history"] if "train/loss" in h] == list(range(1, 7))
    live = json.loads((root / "dvclive" / "metrics.json").read_text())
    assert live["step"] == 6 and np.isfinite(live["train"]["loss"])
    rows = (root / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["step", "loss"] and len(rows) == 7
    from arcpipe.evaluate.model import load_embedder
    from arcpipe.params.evaluate import ModelParams

    rgb = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    onnx = load_embedder(ModelParams(kind="onnx", path=str(out / "backbone.onnx"))).embed(rgb, flip=False)
    ts = load_embedder(ModelParams(kind="torchscript", path=str(out / "backbone.pt"))).embed(rgb, flip=False)
    assert onnx.shape == (3, 32) and np.allclose(onnx, ts, atol=1e-4)
    untrained = load_embedder(ModelParams(kind="onnx", path=str(out / "untrained.onnx"))).embed(rgb, flip=False)
    assert not np.allclose(onnx, untrained, atol=1e-3)  # training moved the weights
    # the run is complete: a second run resumes its last checkpoint and trains no further step
    assert main("train", ["--params", str(params)]) == 0
    assert json.loads((out / "train.json").read_text()) == info
    assert "resumed" in (root / "logs" / "train.log").read_text()


def _final_backbone(root: Path) -> dict:
    ckpts = sorted((root / "models" / "checkpoints").glob("*/step-*.pt"))
    return torch.load(ckpts[-1], weights_only=False)["backbone"]


def test_sigkill_mid_epoch_resumes_to_the_same_weights(tmp_path, pack):
    """Killed with SIGKILL right after its first checkpoint, started again, a run ends with the
    weights of an uninterrupted run, bit for bit."""
    over = dict(epochs=3, checkpoint_every=2, batch_size=8, workers=2, export=["torchscript"])
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "pack").symlink_to(pack)
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--params"]
    r = subprocess.run(cmd + [str(write_params(whole, **over))], cwd=whole, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "pack").symlink_to(pack)
    params = write_params(cut, **over)
    proc = subprocess.Popen(cmd + [str(params)], cwd=cut, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((cut / "models" / "checkpoints").glob("*/step-00000002.pt")):
        time.sleep(0.005)
    still_running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert still_running, "the run ended before it could be killed"
    assert not (cut / "models" / "train").exists()  # nothing exported from a run that did not finish
    done = sorted((cut / "models" / "checkpoints").glob("*/step-*.pt"))
    assert done and int(done[-1].stem.split("-")[1]) < 9
    r = subprocess.run(cmd + [str(params)], cwd=cut, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed" in (cut / "logs" / "train.log").read_text()
    a, b = _final_backbone(whole), _final_backbone(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (whole / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_bytes() == \
        (cut / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_bytes()


def test_a_checkpoint_of_other_params_is_refused_unless_restart(tmp_path, monkeypatch, pack, capsys):
    root = _setup(tmp_path, monkeypatch, pack)
    assert main("train", ["--params", str(write_params(root, epochs=1, export=["torchscript"]))]) == 0
    ckpt = sorted((root / "models" / "checkpoints").glob("*/step-*.pt"))[-1]
    params = write_params(root, epochs=1, lr=0.01, resume_from=str(ckpt))
    assert main("train", ["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "made with other params (train.lr: 0.05 there, 0.01 now)" in err and "train.restart" in err
    params = write_params(root, epochs=1, lr=0.01, resume_from=str(ckpt), restart=True, export=["torchscript"])
    assert main("train", ["--params", str(params)]) == 0


def test_another_pack_never_resumes_a_finished_run(tmp_path, monkeypatch, pack, capsys):
    """The run id holds the pack's digest (and the code's): same params, other data, a run of its own."""
    root = _setup(tmp_path, monkeypatch, pack)
    assert main("train", ["--params", str(write_params(root, epochs=1, export=["torchscript"]))]) == 0
    (first,) = (root / "models" / "checkpoints").iterdir()
    other = tiny_pack(tmp_path / "other", identities=4, per=5)
    assert main("train", ["--params", str(write_params(root, epochs=1, export=["torchscript"],
                                                       pack_dir=str(other)))]) == 0
    runs = sorted((root / "models" / "checkpoints").glob("*/run.json"))
    assert len(runs) == 2, runs
    assert "resumed" not in capsys.readouterr().err
    ckpt = sorted(first.glob("step-*.pt"))[-1]
    params = write_params(root, epochs=1, resume_from=str(ckpt), pack_dir=str(other))
    assert main("train", ["--params", str(params)]) == 2
    assert "made with other data or code (inputs.pack.idx_sha256: " in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, monkeypatch, pack, capsys):
    root = _setup(tmp_path, monkeypatch, pack)
    assert main("train", ["--params", str(write_params(root, num_classes=5))]) == 2
    assert "train.num_classes = 5, but" in capsys.readouterr().err
    # a learning rate that blows the loss up: stop, name the step, keep the last good checkpoint
    assert main("train", ["--params", str(write_params(root, lr=1e30, epochs=3, checkpoint_every=1,
                                                           schedule={"kind": "step", "warmup_steps": 0}))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(not finite): training stopped" in err and "last good checkpoint is" in err and "step-" in err
    assert not (root / "models" / "train").exists()
    assert main("train", ["--params", str(write_params(root, head={"kind": "arcface", "m1": -1.0}))]) == 2
    assert "m1" in capsys.readouterr().err


def test_two_gloo_ranks_train_with_one_backbone(tmp_path, pack):
    """torchrun --standalone --nproc-per-node 2 (gloo): DDP keeps the ranks' backbones identical,
    only rank 0 writes outputs, and a global batch that does not divide is refused."""
    (tmp_path / "pack").symlink_to(pack)
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "scripts" / "train.py"), "--params"]
    r = subprocess.run(cmd + [str(write_params(tmp_path, epochs=1, export=["torchscript"]))], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sums = []
    for rank in (0, 1):
        log = tmp_path / "logs" / ("train.log" if rank == 0 else "train.rank1.log")
        sums.append([ln.split("backbone sha256 ")[1].split()[0] for ln in log.read_text().splitlines()
                     if "backbone sha256 " in ln][-1])
    assert sums[0] == sums[1]
    assert (tmp_path / "models" / "train" / "backbone.pt").is_file()
    info = json.loads((tmp_path / "models" / "train" / "train.json").read_text())
    assert info["world_size"] == 2
    r = subprocess.run(cmd + [str(write_params(tmp_path, epochs=1, batch_size=9))], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "does not divide over 2 ranks" in r.stderr


def test_train_processes_start_their_own_ranks_and_a_wrong_world_is_refused(tmp_path, pack):
    """train.processes 2 under plain `python scripts/train.py`: the stage starts torchrun itself (a
    2-rank world, rank 1 in its own log); under a torchrun whose world is not processes x nodes it
    stops with one line; nodes 2 outside srun says how to start it."""
    (tmp_path / "pack").symlink_to(pack)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    script = str(REPO / "scripts" / "train.py")
    r = subprocess.run([sys.executable, script, "--params", str(write_params(tmp_path, epochs=1, processes=2,
                                                                              export=["torchscript"]))],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting 2 ranks (2 here)" in r.stderr and "--standalone" in r.stderr
    info = json.loads((tmp_path / "models" / "train" / "train.json").read_text())
    assert info["world_size"] == 2 and (tmp_path / "logs" / "train.rank1.log").is_file()

    under = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script, "--params"]
    r = subprocess.run(under + [str(write_params(tmp_path, epochs=1, processes=4))], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "2 ranks started, params ask for 4 (train.processes 4 x train.nodes 1)" in r.stderr
    r = subprocess.run([sys.executable, script, "--params", str(write_params(tmp_path, nodes=2))], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "train.nodes 2: start one launcher per node, under srun" in r.stderr, r.stderr


def test_train_bootstrap_is_the_train_stage_on_its_own_section(tmp_path, monkeypatch, pack, capsys):
    """train_bootstrap: sub-center ArcFace (K = 3) by default, its own folders, its own key names."""
    root = _setup(tmp_path, monkeypatch, pack)
    section = {**TINY, "head": {"kind": "subcenter", "s": 16.0, "m1": 1.0, "m2": 0.3, "m3": 0.0, "k": 3},
               "epochs": 1, "export": ["onnx"], "pack_dir": str(root / "pack"),
               "out_dir": str(root / "models" / "train_bootstrap"),
               "checkpoint_dir": str(root / "models" / "checkpoints"),
               "live_dir": str(root / "dvclive" / "train_bootstrap")}
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"train_bootstrap": section}))
    assert main("train_bootstrap", ["--params", str(params)]) == 0
    out = root / "models" / "train_bootstrap"
    assert np.load(out / "centres.npy").shape == (4, 3, 32)
    assert json.loads((out / "backbone.json").read_text())["loss"].startswith("subcenter (")
    assert (root / "dvclive" / "train_bootstrap" / "metrics.json").is_file()
    assert "summary:" in (root / "logs" / "train_bootstrap.log").read_text().splitlines()[-1]
    from arcpipe.train.live import LiveLog

    LiveLog(root / "dvclive").start([])  # train's live folder holds the bootstrap's: starting it keeps that
    assert (root / "dvclive" / "train_bootstrap" / "metrics.json").is_file()
    assert not (root / "models" / "train").exists()
    params.write_text(yaml.safe_dump({"train_bootstrap": {**section, "num_classes": 7}}))
    assert main("train_bootstrap", ["--params", str(params)]) == 2
    assert "train_bootstrap.num_classes = 7, but" in capsys.readouterr().err
