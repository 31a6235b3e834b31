"""Build the embedded sample: training set (folder + MS1M TSV), LFW, IJB and MegaFace look-alikes.

Every random choice comes from a stream seeded by (seed, what it is for), never from a shared
sequence that iteration order could shift, so the same seed gives the same bytes.
Injected noise is recorded in ground_truth.json with a recipe that re-renders each noisy image
(`Plan.render(recipe)`), so tests can prove each item is what the file says it is.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import PipelineError
from ..params.sample import SampleParams
from . import layouts
from .identities import IdentitySpec, make_spec, render_identity
from .names import freebase_mids, person_names
from .noise import CORRUPT_KINDS, corrupt_file_bytes, corrupt_tsv_field
from .detectable import draw_detectable
from .render import View, render_non_face, render_view
from .base_faces import base_faces, non_face_images

GROUND_TRUTH = "ground_truth.json"


def stream(seed: int, *parts: Any) -> np.random.Generator:
    """An independent random stream for one purpose: parts are ints or strings (hashed stably)."""
    ints = [int(seed)] + [p if isinstance(p, int) else zlib.crc32(str(p).encode("utf-8")) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(ints))


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    if n == 0:
        return 0
    return max(minimum, int(round(n * scale)))


@dataclass
class Plan:
    """Identities and their looks; renders views on demand (canonical pictures are cached)."""

    params: SampleParams
    photos: Optional[str] = None  # the folder the download stage brought the photos into (None: the wheels)
    specs: dict[str, IdentitySpec] = field(default_factory=dict)
    base_index: dict[str, int] = field(default_factory=dict)
    _canon: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bases = base_faces(self.photos)

    @property
    def seed(self) -> int:
        return self.params.seed

    def new_identity(self, base: int) -> str:
        key = f"id{len(self.specs):05d}"
        b = self.bases[base % len(self.bases)]
        self.specs[key] = make_spec(key, b, stream(self.seed, "identity", key))
        self.base_index[key] = base % len(self.bases)
        return key

    def canonical(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._canon:
            self._canon[key] = render_identity(self.bases[self.base_index[key]], self.specs[key])
        return self._canon[key]

    def view(self, key: str, style: str, *parts: Any) -> View:
        canon, lmk = self.canonical(key)
        return render_view(canon, lmk, style, stream(self.seed, "view", key, style, *parts))

    def render(self, recipe: dict[str, Any]) -> bytes:
        """Re-create the file bytes a ground-truth recipe describes."""
        if "identity" in recipe:
            v = self.view(recipe["identity"], recipe["style"], *recipe["stream"])
            data = v.jpeg()
        else:
            pics = dict(non_face_images(self.photos))
            data = render_non_face(pics[recipe["non_face"]], stream(self.seed, *recipe["stream"])).jpeg()
        if "corrupt" in recipe:
            data = corrupt_file_bytes(recipe["corrupt"], data, stream(self.seed, "corrupt", *recipe["stream"]))
        return data


class Writer:
    """Writes files under the (temporary) output root and remembers their hashes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, tuple[str, int]] = {}

    def put(self, rel: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = (hashlib.sha256(data).hexdigest(), len(data))


def _recipe(key: str, style: str, *parts: Any) -> dict[str, Any]:
    return {"identity": key, "style": style, "stream": list(parts)}


# ----------------------------------------------------------------------------------------------


@dataclass
class Allocation:
    """Which identity plays which part (identity keys), before anything is rendered."""

    plan: Plan
    train: list[str]
    lfw: list[str]
    ijb: list[str]
    megaface: list[str]
    distractors: list[str]
    split_idx: list[int]
    lfw_overlap: list[str]
    mf_overlap: list[str]
    rng_noise: np.random.Generator


def plan_sample(params: SampleParams, photos: Optional[str] = None) -> Allocation:
    """Identities for every part; the same params give the same plan (and the same files).

    The base faces are split once: `eval_bases` of them are kept for the evaluation sets (LFW,
    IJB, FaceScrub probes), the rest make the training identities, each base face several
    identities that differ only in geometry. Evaluation identities come `same_base_identities`
    to a base face too, so a verification set holds impostor pairs that share a base photograph.
    MegaFace distractors are new identities, from the base faces no evaluation identity uses.
    """
    sc = params.scale
    nz = params.noise
    T = scaled(params.identities, sc, 2)
    L = scaled(params.lfw_identities, sc, 2)
    S = scaled(params.ijb_subjects, sc, 2)
    P = scaled(params.megaface_probes, sc, 1)
    D = scaled(params.megaface_distractors, sc, 1)
    n_img = params.images_per_identity
    overlap = scaled(nz.eval_overlap, sc)
    # half to FaceScrub, but never more than half its probes (the rest stay evaluation identities)
    o_mf = min(overlap // 2, P // 2)
    o_lfw = overlap - o_mf
    n_split = scaled(nz.split_identities, sc)
    if o_lfw > L:
        raise PipelineError(f"sample.noise.eval_overlap: {overlap} overlapping identities do not fit in "
                            f"{L} LFW and {P // 2} FaceScrub identities (at most half the probes)")
    if overlap + n_split > T:
        raise PipelineError(f"sample.noise: {overlap} overlapping + {n_split} split identities need more than "
                            f"the {T} training identities")
    if n_split and n_img < 2:
        raise PipelineError("sample.noise.split_identities: needs images_per_identity >= 2")

    plan = Plan(params, photos)
    n_bases = len(plan.bases)
    E = params.eval_bases
    if E >= n_bases:
        raise PipelineError(f"sample.eval_bases: {E} of the {n_bases} base faces leaves none for training")
    order = [int(i) for i in stream(params.seed, "bases").permutation(n_bases)]
    eval_pool, train_pool = (order[:E], order[E:]) if E else (order, order)
    k = params.same_base_identities

    train_keys = [plan.new_identity(train_pool[i % len(train_pool)]) for i in range(T)]
    # evaluation identities: k consecutive ones share a base face; LFW, IJB, then FaceScrub
    # probes (one to a base, none shared with a distractor) walk on through the pool
    cursor = 0

    def eval_identities(n: int, per_base: int) -> list[str]:
        nonlocal cursor
        keys = [plan.new_identity(eval_pool[(cursor + j // per_base) % len(eval_pool)]) for j in range(n)]
        cursor += -(-n // per_base)
        return keys

    lfw_fresh = eval_identities(L - o_lfw, k)
    ijb_keys = eval_identities(S, k)
    mf_fresh = eval_identities(P - o_mf, 1)
    # distractors: base faces no evaluation identity uses first, then the training ones
    used = {plan.base_index[key] for key in lfw_fresh + ijb_keys + mf_fresh}
    probe_bases = {plan.base_index[key] for key in mf_fresh}
    distractor_bases = [b for b in eval_pool if b not in used] if E else []
    distractor_bases += [b for b in train_pool if b not in probe_bases]
    distractor_bases = distractor_bases or order
    distractor_keys = [plan.new_identity(distractor_bases[i % len(distractor_bases)]) for i in range(D)]

    rng_noise = stream(params.seed, "noise")
    picks = [int(i) for i in rng_noise.permutation(T)]
    overlap_idx, split_idx = picks[:overlap], picks[overlap:overlap + n_split]
    lfw_overlap = [train_keys[i] for i in overlap_idx[:o_lfw]]
    mf_overlap = [train_keys[i] for i in overlap_idx[o_lfw:]]
    return Allocation(plan, train_keys, lfw_overlap + lfw_fresh, ijb_keys, mf_overlap + mf_fresh,
                      distractor_keys, split_idx, lfw_overlap, mf_overlap, rng_noise)


def build(params: SampleParams, root: Path, log=None, photos: Optional[str] = None) -> dict[str, Any]:
    """Generate everything under `root` (an empty or new directory) from the photos in `photos`
    (see Plan). Returns the summary counts."""
    say = log.info if log is not None else (lambda *a: None)
    a = plan_sample(params, photos)
    plan = a.plan
    n_bases = len(plan.bases)
    say("plan: %d base faces; %d train, %d LFW, %d IJB, %d FaceScrub, %d distractor identities",
        n_bases, len(a.train), len(a.lfw), len(a.ijb), len(a.megaface), len(a.distractors))

    w = Writer(root)
    noise: list[dict[str, Any]] = []
    identities: dict[str, dict[str, Any]] = {
        k: {"base": s.base, "base_source": plan.bases[plan.base_index[k]].source, "names": {}}
        for k, s in plan.specs.items()
    }

    # LFW first: an impossible pairs request fails before the large training set is rendered
    counts_lfw, lfw_same_base = _build_lfw(plan, w, a.lfw, identities)
    counts_train = _build_train(plan, w, a.train, a.split_idx, a.lfw_overlap, a.mf_overlap, noise, identities,
                                a.rng_noise)
    counts_ijb = _build_ijb(plan, w, a.ijb, identities)
    counts_mf = _build_megaface(plan, w, a.megaface, a.distractors, noise, identities)

    for item in noise:
        if item["kind"] == "eval_overlap":
            item["eval_name"] = identities[item["true_identity"]]["names"][item["eval_set"]]

    truth = {
        "seed": params.seed,
        "scale": params.scale,
        "note": "Injected noise and true identities of the generated sample; read only by tests and the report.",
        "noise": noise,
        "identities": identities,
        "lfw_same_base_pairs": lfw_same_base,
        "specs": {k: s.to_json() for k, s in plan.specs.items()},
        "base_faces": {b.name: {"source": b.source, "score": b.score, "low_res": b.low_res} for b in plan.bases},
    }
    w.put(GROUND_TRUTH, json.dumps(truth, indent=1, sort_keys=True) + "\n")
    noise_counts: dict[str, int] = {}
    for item in noise:
        noise_counts[item["kind"]] = noise_counts.get(item["kind"], 0) + 1
    _write_manifest(w)
    return {
        "seed": params.seed,
        "scale": params.scale,
        "base_faces": n_bases,
        "identities": len(plan.specs),
        "train": counts_train,
        "lfw": counts_lfw,
        "ijb": counts_ijb,
        "megaface": counts_mf,
        "noise": dict(sorted(noise_counts.items())),
        "files": len(w.files) + 1,   # + manifest
        "bytes": sum(n for _, n in w.files.values()),
    }


def _write_manifest(w: Writer) -> None:
    import pandas as pd

    rows = sorted(w.files.items())
    df = pd.DataFrame({
        "path": [r for r, _ in rows],
        "part": [r.split("/", 1)[0] if "/" in r else "" for r, _ in rows],
        "bytes": np.array([n for _, (_, n) in rows], dtype=np.int64),
        "sha256": [h for _, (h, _) in rows],
    })
    df.to_parquet(w.root / "manifest.parquet", index=False)


# --- training set ---------------------------------------------------------------------------

@dataclass
class _TrainFile:
    label: str
    rank: int
    data: bytes
    rect_b64: str
    tsv_data: Optional[str] = None   # set for corrupt items whose TSV field differs from base64(data)
    noise: Optional[dict[str, Any]] = None


def _rect_of(view: View) -> str:
    h, w = view.image.shape[:2]
    return layouts.face_rectangle_b64(view.box(), w, h)


_CENTRE_RECT = base64.b64encode(np.array([0.25, 0.25, 0.75, 0.75], "<f4").tobytes()).decode("ascii")


def _build_train(plan: Plan, w: Writer, keys: list[str], split_idx: list[int], lfw_overlap: list[str],
                 mf_overlap: list[str], noise: list[dict], identities: dict, rng: np.random.Generator) -> dict:
    p = plan.params
    nz = p.noise
    n_img = p.images_per_identity
    n_split = len(split_idx)
    mids = freebase_mids(stream(p.seed, "mids"), len(keys) + n_split)
    label_of = dict(zip(keys, mids[:len(keys)]))
    files: dict[str, list[_TrainFile]] = {m: [] for m in mids}
    split_labels = dict(zip((keys[i] for i in split_idx), mids[len(keys):]))

    checks = {"redrawn": 0, "undetected": 0}

    def views(key: str, requests: list[tuple]) -> list[tuple[View, bytes, tuple]]:
        """The identity's training views, each one a face the MS1M detector finds (detectable.py)."""
        out = []
        for v, data, parts, ok in draw_detectable(lambda parts: plan.view(key, "ms1m", *parts), requests,
                                                  p.detector_redraws):
            checks["redrawn"] += parts != requests[len(out)]
            checks["undetected"] += not ok
            out.append((v, data, parts))
        return out

    parts_of: dict[tuple[str, int], tuple] = {}
    for key in keys:
        identities[key]["names"]["train"] = label_of[key]
        for i, (v, data, parts) in enumerate(views(key, [("train", i) for i in range(n_img)])):
            parts_of[key, i] = parts
            label = label_of[key]
            if key in split_labels and i >= n_img // 2:
                label = split_labels[key]
            files[label].append(_TrainFile(label, len(files[label]) + 1, data, _rect_of(v)))

    for key, second in split_labels.items():
        identities[key]["names"]["train_split"] = second
        noise.append({"kind": "split_identity", "part": "train", "true_identity": key,
                      "labels": [label_of[key], second], "filed_identity": second,
                      "paths": [f"train/folder/{second}/{f.rank:04d}.jpg" for f in files[second]],
                      "recipes": [_recipe(key, "ms1m", *parts_of[key, i]) for i in range(n_img // 2, n_img)]})
    for key in lfw_overlap + mf_overlap:
        noise.append({"kind": "eval_overlap", "part": "train", "true_identity": key, "filed_identity": label_of[key],
                      "eval_set": "lfw" if key in lfw_overlap else "megaface"})

    plain = [k for k in keys if k not in split_labels]

    def add(label: str, data: bytes, rect: str, item: dict, tsv_data: Optional[str] = None) -> None:
        rank = len(files[label]) + 1
        item["path"] = f"train/folder/{label}/{rank:04d}.jpg"
        item["filed_identity"] = label
        files[label].append(_TrainFile(label, rank, data, rect, tsv_data, item))
        noise.append(item)

    for k in range(scaled(nz.mislabelled, p.scale)):
        a, b = (plain[int(i)] for i in rng.choice(len(plain), size=2, replace=False))
        [(v, data, parts)] = views(a, [("train-mislabelled", k)])
        add(label_of[b], data, _rect_of(v),
            {"kind": "mislabelled", "part": "train", "true_identity": a,
             "true_label": label_of[a], "recipe": _recipe(a, "ms1m", *parts)})

    pics = non_face_images(plan.photos)
    for k in range(scaled(nz.non_faces, p.scale)):
        name, pic = pics[int(rng.integers(0, len(pics)))]
        b = plain[int(rng.integers(0, len(plain)))]
        recipe = {"non_face": name, "stream": ["non-face", k]}
        v = render_non_face(pic, stream(p.seed, *recipe["stream"]))
        add(label_of[b], v.jpeg(), _CENTRE_RECT,
            {"kind": "non_face", "part": "train", "true_identity": None, "source": name, "recipe": recipe})

    for k in range(scaled(nz.corrupt, p.scale)):
        kind = CORRUPT_KINDS[k % len(CORRUPT_KINDS)]
        b = plain[int(rng.integers(0, len(plain)))]
        recipe = {**_recipe(b, "ms1m", "train-corrupt", k), "corrupt": kind}
        data = plan.render(recipe)
        tsv = corrupt_tsv_field(kind, data, stream(p.seed, "corrupt-tsv", k))
        add(label_of[b], data, _CENTRE_RECT,
            {"kind": "corrupt", "part": "train", "corrupt": kind, "true_identity": b, "recipe": recipe,
             "tsv_fault": {"empty": "empty_field", "truncated": "truncated_jpeg", "garbage": "invalid_base64"}[kind]},
            tsv_data=tsv)

    # folder + TSV, both in sorted label/rank order; the TSV line of each noisy item is recorded
    lines: list[str] = []
    n_files = 0
    for label in sorted(files):
        for f in sorted(files[label], key=lambda f: f.rank):
            w.put(f"train/folder/{label}/{f.rank:04d}.jpg", f.data)
            n_files += 1
            data_b64 = f.tsv_data if f.tsv_data is not None else base64.b64encode(f.data).decode("ascii")
            lines.append(layouts.ms1m_tsv_line(label, f.rank, f.rect_b64, data_b64))
            if f.noise is not None:
                f.noise["tsv_line"] = len(lines)
    for item in noise:
        if item["kind"] == "split_identity":
            item["tsv_lines"] = [_line_of(files, sorted(files), item["filed_identity"], r) for r in
                                 range(1, len(files[item["filed_identity"]]) + 1)]
    w.put("train/ms1m.tsv", "".join(lines))
    return {"labels": len(files), "identities": len(keys), "images": n_files, "tsv_lines": len(lines),
            "views_redrawn": checks["redrawn"], "views_undetected": checks["undetected"]}


def _line_of(files: dict[str, list], labels: list[str], label: str, rank: int) -> int:
    n = 0
    for lab in labels:
        if lab == label:
            return n + rank
        n += len(files[lab])
    raise KeyError(label)


# --- LFW ------------------------------------------------------------------------------------

def _build_lfw(plan: Plan, w: Writer, keys: list[str], identities: dict) -> tuple[dict, list]:
    p = plan.params
    names = person_names(stream(p.seed, "names"), len(keys) + scaled(p.megaface_probes, p.scale))[:len(keys)]
    count_rng = stream(p.seed, "lfw-counts")
    counts = {}
    by_name = dict(zip(names, keys))
    for name in sorted(names):
        key = by_name[name]
        identities[key]["names"]["lfw"] = name
        counts[name] = int(count_rng.integers(p.lfw_min_images, p.lfw_max_images + 1))
        for i in range(1, counts[name] + 1):
            w.put(f"lfw/{layouts.lfw_file(name, i)}", plan.view(key, "lfw", "lfw", i).jpeg())

    # 10 folds of identities. The identities made from one base face stay together (a unit); the
    # units go one by one to the fold with the fewest identities: disjoint folds, as LFW's, when
    # there are at least 20 units, else overlapping groups of two units. Each fold has n matched
    # and n mismatched pairs, a share of the mismatched ones between identities of one base face.
    fold_rng = stream(p.seed, "lfw-folds")
    base_of = {name: plan.base_index[by_name[name]] for name in names}
    units: dict[int, list[str]] = {}
    for name in sorted(names):
        units.setdefault(base_of[name], []).append(name)
    unit_list = [units[b] for b in sorted(units)]
    unit_list = [unit_list[int(i)] for i in fold_rng.permutation(len(unit_list))]
    groups: list[list[str]] = [[] for _ in range(10)]
    if len(unit_list) >= 20:
        for u in unit_list:
            min(groups, key=len).extend(u)
    else:  # too few: overlapping groups of two units each
        for f in range(10):
            for j in range(2):
                groups[f].extend(x for x in unit_list[(2 * f + j) % len(unit_list)] if x not in groups[f])
    n = scaled(p.lfw_pairs_per_fold, p.scale)
    n_twin_target = int(round(n * p.lfw_same_base_pairs))
    folds, same_base_pairs = [], []
    for f, group in enumerate(groups):
        group = sorted(group)
        same = [(a, i, j) for a in group for i in range(1, counts[a] + 1) for j in range(i + 1, counts[a] + 1)]
        diff = [(a, i, b, j) for a in group for b in group if a < b
                for i in range(1, counts[a] + 1) for j in range(1, counts[b] + 1)]
        twin = [d for d in diff if base_of[d[0]] == base_of[d[2]]]
        other = [d for d in diff if base_of[d[0]] != base_of[d[2]]]
        n_twin = min(n_twin_target, len(twin))
        if len(same) < n or len(other) < n - n_twin:
            raise PipelineError(f"sample.lfw_pairs_per_fold: {n} pairs per fold do not fit fold {f + 1} "
                                f"({len(same)} matched, {len(twin) + len(other)} mismatched possible); "
                                f"add lfw identities or images")
        pick_same = sorted(same[int(i)] for i in fold_rng.choice(len(same), size=n, replace=False))
        pick_twin = [twin[int(i)] for i in fold_rng.choice(len(twin), size=n_twin, replace=False)]
        pick_other = [other[int(i)] for i in fold_rng.choice(len(other), size=n - n_twin, replace=False)]
        folds.append((pick_same, sorted(pick_twin + pick_other)))
        same_base_pairs += [[f + 1, a, i, b, j] for a, i, b, j in sorted(pick_twin)]
    w.put("lfw/pairs.txt", layouts.lfw_pairs_text(folds))
    return {"identities": len(names), "base_faces": len(units), "images": sum(counts.values()),
            "pairs": 20 * n, "same_base_mismatched": len(same_base_pairs), "folds": 10}, same_base_pairs


# --- IJB ------------------------------------------------------------------------------------

def _build_ijb(plan: Plan, w: Writer, keys: list[str], identities: dict) -> dict:
    p = plan.params
    rng = stream(p.seed, "ijb")
    t = "ijbs"
    meta, crops = "ijb/IJBS/meta", "ijb/IJBS/loose_crop"
    tid_mid, pts, templates = [], [], []  # templates: (tid, sid, [(name, media, box)])
    n_image = n_media = n_template = 0
    for s, key in enumerate(keys):
        sid = s + 1
        identities[key]["names"]["ijb"] = sid
        for _ in range(p.ijb_templates_per_subject):
            n_template += 1
            rows = []
            for _m in range(int(rng.integers(1, 3))):
                n_media += 1
                for _f in range(int(rng.integers(1, 4))):
                    n_image += 1
                    name = f"{n_image}.jpg"
                    v = plan.view(key, "ijb", "ijb", n_image)
                    w.put(f"{crops}/{name}", v.jpeg())
                    iod = float(np.linalg.norm(v.landmarks[1] - v.landmarks[0]))
                    score = round(min(0.999, 0.55 + 0.45 * min(1.0, iod / 40.0)), 4)
                    tid_mid.append((name, n_template, n_media))
                    pts.append((name, v.landmarks, score))
                    rows.append((name, n_media, v.box()))
            templates.append((n_template, sid, rows))
    pairs = [(a[0], b[0], int(a[1] == b[1])) for i, a in enumerate(templates) for b in templates[i + 1:]]
    w.put(f"{meta}/{t}_face_tid_mid.txt", layouts.ijb_face_tid_mid(tid_mid))
    w.put(f"{meta}/{t}_template_pair_label.txt", layouts.ijb_template_pair_label(pairs))
    w.put(f"{meta}/{t}_name_5pts_score.txt", layouts.ijb_name_5pts_score(pts))

    # 1:N: each subject's first template is its gallery template, in G1 or G2; the rest are probes
    sids = [int(i) + 1 for i in rng.permutation(len(keys))]
    g1 = set(sids[: len(sids) // 2])
    first: dict[int, int] = {}
    for tid, sid, _ in templates:
        first.setdefault(sid, tid)

    def csv(sel) -> str:
        return layouts.ijb_1n_csv((tid, sid, name, media, box)
                                  for tid, sid, rows in templates if sel(tid, sid) for name, media, box in rows)

    w.put(f"{meta}/{t}_1N_gallery_G1.csv", csv(lambda tid, sid: first[sid] == tid and sid in g1))
    w.put(f"{meta}/{t}_1N_gallery_G2.csv", csv(lambda tid, sid: first[sid] == tid and sid not in g1))
    w.put(f"{meta}/{t}_1N_probe_mixed.csv", csv(lambda tid, sid: first[sid] != tid))
    genuine = sum(1 for *_, lab in pairs if lab)
    return {"subjects": len(keys), "templates": n_template, "media": n_media, "images": n_image,
            "pairs": len(pairs), "genuine_pairs": genuine}


# --- MegaFace -------------------------------------------------------------------------------

def _build_megaface(plan: Plan, w: Writer, probe_keys: list[str], distractor_keys: list[str],
                    noise: list[dict], identities: dict) -> dict:
    p = plan.params
    nz = p.noise
    n_lfw = scaled(p.lfw_identities, p.scale, 2)
    names = person_names(stream(p.seed, "names"), n_lfw + len(probe_keys))[n_lfw:]
    rng = stream(p.seed, "megaface-noise")
    per = p.megaface_images_per_probe
    by_name = dict(zip(names, probe_keys))
    n_probe_images = 0
    for name in sorted(names):
        key = by_name[name]
        identities[key]["names"]["megaface"] = name
        for k in range(1, per + 1):
            w.put(f"megaface/facescrub/{name}/{name}_{k}.jpg", plan.view(key, "megaface", "facescrub", k).jpeg())
            n_probe_images += 1

    group_size = 25
    distractor_paths = []
    for i, key in enumerate(distractor_keys):
        rel = f"{i // group_size:03d}/{i:06d}_0.jpg"
        identities[key]["names"].setdefault("megaface_distractor", rel)
        w.put(f"megaface/distractors/{rel}", plan.view(key, "megaface", "distractor", i).jpeg())
        distractor_paths.append(rel)

    fs_noise, mf_noise = [], []
    sorted_names = sorted(names)
    for k in range(scaled(nz.megaface_noisy_probes, p.scale)):
        name = sorted_names[int(rng.integers(0, len(sorted_names)))]
        other = distractor_keys[int(rng.integers(0, len(distractor_keys)))]
        # next free index under that name
        idx = per + 1 + sum(1 for e in fs_noise if e.startswith(f"{name}/"))
        rel = f"{name}/{name}_{idx}.jpg"
        recipe = _recipe(other, "megaface", "facescrub-noise", k)
        w.put(f"megaface/facescrub/{rel}", plan.render(recipe))
        fs_noise.append(rel)
        noise.append({"kind": "megaface_noisy_probe", "part": "megaface", "path": f"megaface/facescrub/{rel}",
                      "list": "megaface/facescrub_noises.txt", "true_identity": other,
                      "filed_identity": name, "recipe": recipe})
    for k in range(scaled(nz.megaface_noisy_distractors, p.scale)):
        name = sorted_names[int(rng.integers(0, len(sorted_names)))]
        i = len(distractor_keys) + k
        rel = f"{i // group_size:03d}/{i:06d}_0.jpg"
        recipe = _recipe(by_name[name], "megaface", "distractor-noise", k)
        w.put(f"megaface/distractors/{rel}", plan.render(recipe))
        mf_noise.append(rel)
        noise.append({"kind": "megaface_noisy_distractor", "part": "megaface", "path": f"megaface/distractors/{rel}",
                      "list": "megaface/megaface_noises.txt", "true_identity": by_name[name],
                      "filed_identity": None, "probe_name": name, "recipe": recipe})
    w.put("megaface/facescrub_noises.txt", "".join(f"{r}\n" for r in sorted(fs_noise)))
    w.put("megaface/megaface_noises.txt", "".join(f"{r}\n" for r in sorted(mf_noise)))
    return {"probes": len(names), "probe_images": n_probe_images + len(fs_noise),
            "distractors": len(distractor_keys) + len(mf_noise),
            "groups": math.ceil((len(distractor_keys) + len(mf_noise)) / group_size)}
