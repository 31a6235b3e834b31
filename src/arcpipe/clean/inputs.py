"""What the cleaning stage reads besides the training store, each checked with a one-line error:
the bootstrap head's sub-centres, the evaluation sets' identity centres, the raw pack's manifest.

    w = load_subcentres("models/train_bootstrap/centres.npy", store)     # (C, K, D), memory-mapped
    ev = load_eval_set("lfw", "data/features/lfw")                        # an EvalSet for the overlap rule
    keys, labels = packed_images("data/pack")                            # the pack's images, in key order
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PipelineError
from .centres import identity_centres
from .rules import EvalSet
from .store import FeatureStore

IDENTITIES = "identities.parquet"  # beside an evaluation set's store: label, identity, images

__all__ = ["load_subcentres", "load_eval_set", "packed_images", "check_store_against_pack", "IDENTITIES"]


def load_subcentres(path: str | os.PathLike, store: FeatureStore) -> np.ndarray:
    """The bootstrap head's (C, K, D) sub-centres, memory-mapped; C must be the store's class count
    (its largest label + 1) and D its feature dim."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: does not exist; disable clean.subcenter.enabled or set clean.bootstrap_dir "
                            f"to a bootstrap training that exported centres.npy")
    try:
        w = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy array ({' '.join(str(e).split())})") from None
    classes = int(store.labels.max()) + 1 if store.count else 0
    if w.ndim != 3 or w.dtype.kind != "f":
        raise PipelineError(f"{path}: expected a float (classes, sub-centres, dim) array, found {w.dtype} "
                            f"{tuple(w.shape)}")
    if w.shape[0] != classes or w.shape[2] != store.dim:
        raise PipelineError(f"{path}: sub-centres for {w.shape[0]} classes of {w.shape[2]}-d features, but "
                            f"{store.path} holds {classes} classes of {store.dim}-d features (another model's "
                            f"head, or another pack's?)")
    return w


def load_eval_set(name: str, folder: str | os.PathLike, chunk: int = 65536) -> EvalSet:
    """An evaluation set's identity centres: the renormalised mean of each identity's unit features
    (images without an identity, label -1, are left out), named from its identities.parquet."""
    folder = Path(folder)
    store = FeatureStore(folder)
    table = folder / IDENTITIES
    if not table.is_file():
        raise PipelineError(f"{table}: does not exist (an evaluation set's features name its identities "
                            f"there: the features stage writes it)")
    ids = pd.read_parquet(table)
    missing = sorted({"label", "identity"} - set(ids.columns))
    if missing:
        raise PipelineError(f"{table}: lacks columns {', '.join(missing)}")
    labels = store.labels
    if not (labels >= 0).any():
        raise PipelineError(f"{folder}: evaluation set {name} has no image with an identity")
    centres, counts = identity_centres(store, chunk=chunk)
    name_of = dict(zip(ids["label"].astype(np.int64).tolist(), ids["identity"].astype(str).tolist()))
    unnamed = sorted(set(np.flatnonzero(counts > 0).tolist()) - set(name_of))
    if unnamed:
        raise PipelineError(f"{table}: label {unnamed[0]} of {folder} has no row ({len(unnamed)} labels unnamed)")
    live = np.flatnonzero(counts > 0)
    names = [name_of[int(i)] or f"label {int(i)}" for i in live]
    return EvalSet(name, centres[live], names)


def packed_images(pack_dir: str | os.PathLike) -> tuple[Path, pd.DataFrame]:
    """(manifest path, its packed rows in key order): the images a pack holds."""
    path = Path(pack_dir) / "manifest.parquet"
    if not path.is_file():
        raise PipelineError(f"{path}: does not exist (the pack stage writes it beside train.rec)")
    man = pd.read_parquet(path)
    missing = sorted({"key", "label", "packed"} - set(man.columns))
    if missing:
        raise PipelineError(f"{path}: lacks columns {', '.join(missing)}")
    packed = man[man["packed"].astype(bool)].sort_values("key", kind="stable")
    return path, packed.reset_index(drop=True)


def check_store_against_pack(store: FeatureStore, pack_dir: str | os.PathLike) -> pd.DataFrame:
    """The store holds exactly the pack's images, in key order, under the pack's labels; returns
    the manifest's packed rows (row i: the store's row i)."""
    path, packed = packed_images(pack_dir)
    keys, labels = packed["key"].to_numpy(np.int64), packed["label"].to_numpy(np.int64)
    store.check_keys(keys.astype(str), f"{path} (packed images in key order)")
    got = store.labels
    bad = np.flatnonzero(got != labels)
    if len(bad):
        i = int(bad[0])
        raise PipelineError(f"{store.path}: row {i} (key {int(keys[i])}) has label {int(got[i])}, {path} says "
                            f"{int(labels[i])} ({len(bad)} labels differ)")
    return packed
