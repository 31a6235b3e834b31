"""How well the pipeline took the sample's known training noise out: precision and recall per kind.

Inputs: the sample's ground_truth.json ("noise": what was injected where), the raw pack's
manifest (source -> packed, label, key), the detect and align manifests of the training set
(which images those stages rejected, and why), and the clean stage's removals.parquet (COLUMNS of
arcpipe.clean.rules) and, optionally, kept.parquet (checked against the removals: the same keys
must stay). The *cleaned set* is what the final training sees: the packed images no image row of
the removal table names.

Every training image ends in exactly one place, its *cause*: `detect:<status>` or
`align:<status>` (a reject of that stage), `pack:<reason>` (not packed for another reason),
`clean:<rule>` (an image row of the removal table) or the cleaned set.

Image-level kinds (mislabelled, non_face, corrupt; one image each)
  recall     caught / injected, where caught = injected images of the kind that did not reach the
             cleaned set, whatever the cause (the detect stage's rejects count: most corrupt files
             and non-faces never get past it); `caught_by` splits caught by cause.
  precision  true_positives / removed, over *image decisions*: rejects before cleaning and image
             removals of the image rules (subcenter, intra, nearest). Each such removal is credited to
             exactly one kind, so none is a true positive of two kinds at once:
             - a noise image is a true positive of its own kind, whichever decision removed it
               (a non-face the intra rule removed is a non_face true positive);
             - a clean image (one no image-level noise item names) is a false positive of the
               kind its decision aims at: decode rejects (unreadable, too_large) -> corrupt, any
               other reject before cleaning (no_face, align_failed, pack) -> non_face, the image
               rules -> mislabelled.
             removed = true_positives + false_positives; `false_positives_by` splits them by cause.
  precision_detected  the same without the clean faces the detector did not find
             (`undetected_faces`: detect:no_face on an image no noise item names). The stage that
             drops non-faces cannot tell them from faces MTCNN misses; on the sample's harder
             views that is about 5% of the faces, so `precision` of non_face measures the detector
             and `precision_detected` the decisions the pipeline makes about what it found.
             Images that went with a whole identity (overlap, min_images, inter drop) are identity
             decisions: they count for recall, not here (they are in `images.clean_lost`).

Identity-level kinds
  split_identity  one person filed under several labels. Caught when the cleaned set no longer
             holds the person under two labels: the inter rule put the labels under one target
             (merge, or drop: `inter:merge`, `inter:drop`), or every label but one (or all) has no
             image left (`removed`). Precision is over the label pairs the inter rule joined (a
             group of labels merged into one target joins every pair in it; with two labels, one
             pair per merge): true positives are pairs of one person. Pairs rather than merges,
             so that precision and recall count the same thing, and a group of three (a split
             pair pulled onto a look-alike) scores 1/3, not 0 (`decisions`, `false_decisions`:
             the same counted per removal-table row).
  eval_overlap  a training identity that is also an evaluation identity. Caught when no image of
             its label reaches the cleaned set (`caught_by`: overlap when the overlap rule took
             its images, else the cause of most of them). Precision is over the overlap rule's
             identity rows: a true positive is a removed label that is, or has had merged into it,
             an overlapping identity (`named_right`: of those, the ones whose detail names the very
             evaluation identity).

A label's person comes from the ground truth's identities (names.train, names.train_split); a
label without one is its own person. recall is null when nothing was injected, precision null
when nothing was removed.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from ..columns import STATUS_WITH_CROP
from ..errors import PipelineError
from ..fsutil import write_json_atomic
from .rules import COLUMNS, IDENTITY, IMAGE

__all__ = ["IMAGE_KINDS", "IDENTITY_KINDS", "Locator", "noise_quality", "quality_from_files",
           "quality_from_params", "write_quality"]

IMAGE_KINDS = ("mislabelled", "non_face", "corrupt")
IDENTITY_KINDS = ("split_identity", "eval_overlap")
CLEAN = "clean"                            # truth of an image no image-level noise item names
DECODE_STATUSES = ("unreadable", "too_large")  # rejects that say the bytes are bad: aimed at corrupt
IMAGE_RULES = ("subcenter", "intra", "nearest")      # the clean rules that judge single images
EXAMPLES = 20                              # missed items / false positives listed by name, at most
SAMPLE_TSV = "train/ms1m.tsv"              # where the sample writes its TSV, under its out_dir
_TARGET = re.compile(r"^(merged into|same person as) (-?\d+)$")


@dataclass(frozen=True)
class Locator:
    """Turns a ground-truth item's place (path under the sample folder, TSV line) into the
    `source` key the detect/align/pack manifests give that image."""

    format: str = "folder"
    base: str = "train/folder"  # folder: the source folder under the sample's out_dir; ms1m_tsv: the file's key

    @classmethod
    def for_source(cls, sample_dir: str, source: str, fmt: str) -> "Locator":
        """The locator for a training data set `source` (params detect.datasets) of format `fmt`."""
        if fmt == "folder":
            rel = posixpath.normpath(os.path.relpath(source, sample_dir).replace(os.sep, "/"))
            if rel.startswith(".."):
                raise PipelineError(f"noise quality: training source {source} is not inside the sample "
                                    f"folder {sample_dir}, so the ground truth's paths do not name its images")
            return cls("folder", rel)
        if fmt == "ms1m_tsv":
            if source.endswith(".tsv"):
                return cls("ms1m_tsv", posixpath.basename(source.replace(os.sep, "/")))
            rel = os.path.relpath(os.path.join(sample_dir, SAMPLE_TSV), source).replace(os.sep, "/")
            return cls("ms1m_tsv", posixpath.normpath(rel))
        raise PipelineError(f"noise quality: training source format {fmt!r}; the sample's ground truth "
                            f"locates images only in a folder or ms1m_tsv source")

    def source(self, path: Optional[str], tsv_line: Optional[int]) -> str:
        if self.format == "ms1m_tsv":
            if tsv_line is None:
                raise PipelineError(f"ground truth: item {path!r} has no tsv_line")
            return f"{self.base}:{int(tsv_line)}"
        prefix = "" if self.base in ("", ".") else self.base + "/"
        if path is None or not path.startswith(prefix):
            raise PipelineError(f"ground truth: path {path!r} is not under the training source {self.base}/")
        return path[len(prefix):]


# --------------------------------------------------------------------------------- inputs

def _need(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PipelineError(f"{what}: missing column(s) {', '.join(missing)}")


def _images(pack: pd.DataFrame, detect: pd.DataFrame, align: pd.DataFrame) -> pd.DataFrame:
    """One row per training image: source, identity, label, key, packed, and its cause so far."""
    _need(pack, ["source", "identity", "label", "key", "packed"], "pack manifest")
    _need(detect, ["source", "status"], "detect manifest")
    _need(align, ["source", "status"], "align manifest")
    img = pack[["source", "identity", "label", "key", "packed"]].reset_index(drop=True)
    img["source"] = img["source"].astype(str)
    img["identity"] = img["identity"].astype(str)
    img["reason"] = (pack["reason"].fillna("").astype(str).to_numpy() if "reason" in pack.columns else "")
    for name, df in (("pack", img), ("detect", detect), ("align", align)):
        dup = pd.Index(df["source"].astype(str)).duplicated()
        if dup.any():
            raise PipelineError(f"{name} manifest: source {df['source'].astype(str)[dup].iloc[0]!r} appears twice")
    for name, df in (("detect", detect), ("align", align)):
        status = df.set_index(df["source"].astype(str))["status"].astype(str)
        if len(status) != len(img) or not status.index.isin(img["source"]).all():
            other = sorted(set(status.index) ^ set(img["source"]))
            raise PipelineError(f"{name} manifest and pack manifest hold different images "
                                f"({len(status)} vs {len(img)}; e.g. {other[0]!r})")
        img[f"{name}_status"] = status.reindex(img["source"]).to_numpy()
    img["packed"] = img["packed"].astype(bool)
    img["label"] = img["label"].astype(np.int64)
    img["key"] = img["key"].astype(np.int64)
    d_ok = img["detect_status"].isin(STATUS_WITH_CROP).to_numpy()
    a_ok = img["align_status"].isin(STATUS_WITH_CROP).to_numpy()
    packed = img["packed"].to_numpy()
    if (packed & ~(d_ok & a_ok)).any():
        bad = img["source"][packed & ~(d_ok & a_ok)].iloc[0]
        raise PipelineError(f"pack manifest: {bad!r} is packed, but detect or align rejected it")
    keys = img["key"][packed]
    if (keys < 0).any() or keys.duplicated().any():
        raise PipelineError("pack manifest: packed images need distinct record keys >= 0")
    reason = img["reason"].replace("", "not_packed")
    cause = np.where(~d_ok, "detect:" + img["detect_status"],
                     np.where(~a_ok, "align:" + img["align_status"],
                              np.where(~packed, "pack:" + reason, "")))
    status = np.where(~d_ok, img["detect_status"], img["align_status"])
    aim = np.where(np.isin(status, DECODE_STATUSES), "corrupt", "non_face")
    img["cause"] = cause
    img["aim"] = np.where(cause != "", aim, "")  # what a reject before cleaning aims at
    return img


def _apply_removals(img: pd.DataFrame, removals: pd.DataFrame, kept: Optional[pd.DataFrame]) -> None:
    _need(removals, COLUMNS, "removals table")
    rows = removals[removals["level"] == IMAGE]
    try:
        keys = rows["key"].astype(str).str.strip().astype(np.int64).to_numpy()
    except ValueError:
        raise PipelineError("removals table: an image row's key is not a record index") from None
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise PipelineError(f"removals table: key {keys[dup][0]} is removed twice")
    packed = img.index[img["packed"]]
    where = pd.Series(packed, index=img["key"][img["packed"]].to_numpy())
    unknown = ~np.isin(keys, where.index)
    if unknown.any():
        raise PipelineError(f"removals table: key {keys[unknown][0]} is not a packed image of the pack manifest")
    at = where.loc[keys].to_numpy()
    rules = rows["rule"].astype(str).to_numpy()
    img.loc[at, "cause"] = np.char.add("clean:", rules.astype(str))
    img.loc[at, "aim"] = np.where(np.isin(rules, IMAGE_RULES), "mislabelled", "")
    img["kept"] = img["packed"] & (img["cause"] == "")
    if kept is not None:
        _need(kept, ["key"], "kept table")
        got = set(kept["key"].astype(str).str.strip().astype(np.int64))
        want = set(img["key"][img["kept"]].tolist())
        if got != want:
            diff = sorted(got ^ want)
            raise PipelineError(f"kept table and removals table disagree: key {diff[0]} is "
                                f"{'kept' if diff[0] in got else 'not kept'} in kept.parquet "
                                f"({len(diff)} keys differ)")


def _truth_kinds(img: pd.DataFrame, noise: list[dict], locate: Locator) -> dict[int, dict]:
    """image row -> its image-level noise item; sets img['truth']."""
    by_source = pd.Series(img.index, index=img["source"])
    out: dict[int, dict] = {}
    for it in noise:
        if it["kind"] not in IMAGE_KINDS:
            continue
        src = locate.source(it.get("path"), it.get("tsv_line"))
        if src not in by_source.index:
            raise PipelineError(f"ground truth: {it['kind']} item {it.get('path')!r} (source {src!r}) is not "
                                f"in the training manifests: are they of this sample?")
        row = int(by_source[src])
        if row in out:
            raise PipelineError(f"ground truth: {src!r} is named by two noise items")
        out[row] = it
    img["truth"] = CLEAN
    img.loc[list(out), "truth"] = [it["kind"] for it in out.values()]
    return out


# --------------------------------------------------------------------------------- metrics

UNDETECTED = "detect:no_face"


def _ratio(num: int, den: int) -> Optional[float]:
    return None if den == 0 else round(num / den, 6)


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _image_kind(img: pd.DataFrame, kind: str) -> dict[str, Any]:
    mine = img[img["truth"] == kind]
    caught = mine[~mine["kept"]]
    tp = int((mine["aim"] != "").sum())
    fp = img[(img["truth"] == CLEAN) & (img["aim"] == kind)]
    removed = tp + len(fp)
    undetected = int((fp["cause"] == UNDETECTED).sum())
    return {"injected": len(mine), "caught": len(caught), "missed": len(mine) - len(caught),
            "recall": _ratio(len(caught), len(mine)), "caught_by": _counts(caught["cause"]),
            "removed": removed, "true_positives": tp, "false_positives": len(fp),
            "false_positives_by": _counts(fp["cause"]), "precision": _ratio(tp, removed),
            "undetected_faces": undetected, "precision_detected": _ratio(tp, removed - undetected),
            "missed_examples": sorted(mine["source"][mine["kept"]])[:EXAMPLES]}


class _Labels:
    """Pack labels, their identities and persons, and where the inter rule sent each label."""

    def __init__(self, img: pd.DataFrame, removals: pd.DataFrame, truth: Mapping[str, Any]):
        packed = img[img["packed"]]
        pairs = packed[["identity", "label"]].drop_duplicates()
        if pairs["identity"].duplicated().any() or pairs["label"].duplicated().any():
            raise PipelineError("pack manifest: an identity has two labels, or a label two identities")
        self.label_of = dict(zip(pairs["identity"].astype(str), pairs["label"].astype(int)))
        self.mid_of = {v: k for k, v in self.label_of.items()}
        self.person_of_mid: dict[str, str] = {}
        for key, ident in (truth.get("identities") or {}).items():
            for field in ("train", "train_split"):
                if field in ident.get("names", {}):
                    self.person_of_mid[str(ident["names"][field])] = key
        self.kept_labels = set(img["label"][img["kept"]].astype(int))
        ident = removals[removals["level"] == IDENTITY]
        self.target: dict[int, int] = {}
        self.inter_action: dict[int, str] = {}
        for label, detail in zip(ident["label"][ident["rule"] == "inter"], ident["detail"][ident["rule"] == "inter"]):
            m = _TARGET.match(str(detail).strip())
            if m is None:
                raise PipelineError(f"removals table: inter row of label {label}: detail {detail!r}, expected "
                                    f"'merged into T' or 'same person as T'")
            self.target[int(label)] = int(m.group(2))
            self.inter_action[int(label)] = "merge" if m.group(1) == "merged into" else "drop"
        self.inter_rows = len(self.target)
        over = ident[ident["rule"] == "overlap"]
        self.overlap_rows = list(zip(over["label"].astype(int), over["detail"].astype(str)))

    def person(self, label: int) -> str:
        mid = self.mid_of.get(label, f"label {label}")
        return self.person_of_mid.get(mid, f"mid {mid}")

    def final(self, label: int) -> int:
        seen = set()
        while label in self.target and label not in seen:
            seen.add(label)
            label = self.target[label]
        return label

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for label in self.target:
            out.setdefault(self.final(label), []).append(label)
        return {t: sorted({t, *ls}) for t, ls in out.items()}


def _split(items: list[dict], labels: _Labels) -> dict[str, Any]:
    caught_by, missed = [], []
    for it in items:
        ls = [labels.label_of.get(str(m), -1) for m in it["labels"]]
        present = [l for l in ls if l >= 0 and l in labels.kept_labels]
        finals = {labels.final(l) for l in present}
        packed = [l for l in ls if l >= 0]
        if len(packed) > 1 and len({labels.final(l) for l in packed}) == 1:
            actions = {labels.inter_action[l] for l in packed if l in labels.inter_action}
            caught_by.append("inter:" + ("drop" if "drop" in actions else "merge"))
        elif len(finals) <= 1:
            caught_by.append("removed")
        else:
            missed.append(" + ".join(str(m) for m in it["labels"]))
    pairs = true = 0
    for group in labels.groups().values():
        persons = [labels.person(l) for l in group]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                pairs += 1
                true += persons[i] == persons[j]
    false_rows = sum(labels.person(s) != labels.person(t) for s, t in labels.target.items())
    n = len(items)
    return {"injected": n, "caught": len(caught_by), "missed": len(missed), "recall": _ratio(len(caught_by), n),
            "caught_by": _counts(caught_by), "removed": pairs, "true_positives": true,
            "false_positives": pairs - true, "precision": _ratio(true, pairs),
            "decisions": labels.inter_rows, "false_decisions": int(false_rows),
            "missed_examples": sorted(missed)[:EXAMPLES]}


def _overlap(items: list[dict], labels: _Labels, img: pd.DataFrame) -> dict[str, Any]:
    caught_by, missed = [], []
    overlap_labels: dict[int, str] = {}
    for it in items:
        label = labels.label_of.get(str(it["filed_identity"]), -1)
        if label < 0:
            caught_by.append("upstream")
            continue
        overlap_labels[label] = str(it.get("eval_name", ""))
        if label in labels.kept_labels:
            missed.append(str(it["filed_identity"]))
            continue
        causes = img["cause"][img["packed"] & (img["label"] == label)]
        caught_by.append("overlap" if (causes == "clean:overlap").any() else Counter(causes).most_common(1)[0][0])
    groups = labels.groups()
    tp = named = 0
    fp_names = []
    for label, detail in labels.overlap_rows:
        hit = [l for l in groups.get(label, [label]) if l in overlap_labels]
        if hit:
            tp += 1
            named += detail.split(":", 1)[-1] in {overlap_labels[l] for l in hit}
        else:
            fp_names.append(labels.mid_of.get(label, f"label {label}"))
    n, removed = len(items), len(labels.overlap_rows)
    return {"injected": n, "caught": len(caught_by), "missed": len(missed), "recall": _ratio(len(caught_by), n),
            "caught_by": _counts(caught_by), "removed": removed, "true_positives": tp,
            "false_positives": removed - tp, "precision": _ratio(tp, removed), "named_right": named,
            "missed_examples": sorted(missed)[:EXAMPLES], "false_positive_examples": sorted(fp_names)[:EXAMPLES]}


def noise_quality(truth: Mapping[str, Any], pack: pd.DataFrame, detect: pd.DataFrame, align: pd.DataFrame,
                  removals: pd.DataFrame, kept: Optional[pd.DataFrame] = None, *,
                  locator: Locator = Locator()) -> dict[str, Any]:
    """Precision and recall of the pipeline at removing each training noise kind of `truth` (the
    module docstring has the definitions), with counts; a dict ready for JSON."""
    img = _images(pack, detect, align)
    _apply_removals(img, removals, kept)
    noise = [it for it in truth.get("noise", []) if it.get("part", "train") == "train"]
    _truth_kinds(img, noise, locator)
    labels = _Labels(img, removals, truth)
    kinds: dict[str, Any] = {k: _image_kind(img, k) for k in IMAGE_KINDS}
    kinds["split_identity"] = _split([it for it in noise if it["kind"] == "split_identity"], labels)
    kinds["eval_overlap"] = _overlap([it for it in noise if it["kind"] == "eval_overlap"], labels, img)
    known = set(IMAGE_KINDS) | set(IDENTITY_KINDS)
    clean = img[(img["truth"] == CLEAN) & ~img["kept"]]
    noisy_left = img[(img["truth"] != CLEAN) & img["kept"]]
    return {
        "images": {"in": len(img), "packed": int(img["packed"].sum()), "cleaned": int(img["kept"].sum()),
                   "noise_left": len(noisy_left),
                   "clean_lost": {"total": len(clean), "by": _counts(clean["cause"])}},
        "identities": {"packed": len(labels.label_of),
                       "cleaned": len({labels.final(l) for l in labels.kept_labels})},
        "kinds": kinds,
        "not_measured": _counts(it["kind"] for it in truth.get("noise", []) if it["kind"] not in known),
    }


# --------------------------------------------------------------------------------- files

def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path}: does not exist")
    return pd.read_parquet(path)


def quality_from_files(truth: str | os.PathLike, pack_manifest: str | os.PathLike,
                       detect_manifest: str | os.PathLike, align_manifest: str | os.PathLike,
                       removals: str | os.PathLike, kept: Optional[str | os.PathLike] = None, *,
                       locator: Locator = Locator()) -> dict[str, Any]:
    """noise_quality over the files themselves (kept: None -> not checked)."""
    tpath = Path(truth)
    if not tpath.is_file():
        raise PipelineError(f"{tpath}: does not exist (noise quality needs the sample's ground truth)")
    try:
        gt = json.loads(tpath.read_text())
    except ValueError as e:
        raise PipelineError(f"{tpath}: not JSON ({e})") from None
    return noise_quality(gt, _read_table(Path(pack_manifest)), _read_table(Path(detect_manifest)),
                         _read_table(Path(align_manifest)), _read_table(Path(removals)),
                         None if kept is None else _read_table(Path(kept)), locator=locator)


def quality_from_params(params) -> dict[str, Any]:
    """noise_quality for the paths a params.yaml (arcpipe.params Params) names: the sample's
    ground truth, the pack's training set through detect and align, the clean stage's tables."""
    name = params.pack.dataset
    ds = params.detect.datasets[name]
    clean = Path(params.clean.out_dir)
    pack_dir = getattr(params.clean, "pack_dir", None) or params.pack.out_dir  # the pack clean read
    truth = getattr(params.clean, "ground_truth", None) or Path(params.sample.out_dir) / "ground_truth.json"
    return quality_from_files(truth,
                              Path(pack_dir) / "manifest.parquet",
                              Path(params.detect.out_dir) / name / "manifest.parquet",
                              Path(params.align.out_dir) / name / "manifest.parquet",
                              clean / "removals.parquet", clean / "kept.parquet",
                              locator=Locator.for_source(params.sample.out_dir, ds.source, ds.format))


def write_quality(path: str | os.PathLike, quality: Mapping[str, Any]) -> Path:
    """Write a noise_quality result to a metrics JSON file atomically (sorted keys); returns the path."""
    path = Path(path)
    write_json_atomic(path, dict(quality))
    return path
