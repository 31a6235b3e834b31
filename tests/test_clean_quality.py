"""Noise quality (arcpipe.clean.quality) on a hand-made sample whose precision and recall are known.

Eleven labels of four images each (m.a .. m.t2), plus the planted noise:

  mislabelled  a/0005 (intra: caught), b/0005 (missed), c/0005 (detect no_face: caught, still a
               mislabelled true positive, not a non_face one), q/0005 (went with m.q: caught, but an
               identity decision, so no true positive)
  non_face     a/0006 (detect no_face), b/0006 (passed detection, intra removed it)
  corrupt      a/0007 (detect unreadable), c/0006 (detect too_large)
  clean images removed by image decisions: a/0001 (subcenter -> mislabelled FP), c/0001 (detect
               no_face -> non_face FP), b/0001 (align_failed -> non_face FP), p/0001 (detect
               unreadable -> corrupt FP)
  split        m.s1 + m.s2 merged (caught), m.t1 + m.t2 left apart (missed); m.r wrongly merged
               into m.c (a false pair)
  overlap      m.o (LFW Ann_Lee) removed by the overlap rule, m.p (FaceScrub) missed, m.q a
               clean identity the overlap rule removed (false positive)
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from arcpipe.clean.quality import Locator, noise_quality, quality_from_files, write_quality
from arcpipe.clean.rules import COLUMNS
from arcpipe.errors import PipelineError

MIDS = ["m.a", "m.b", "m.c", "m.o", "m.p", "m.q", "m.r", "m.s1", "m.s2", "m.t1", "m.t2"]
EXTRA = {"m.a": 3, "m.b": 2, "m.c": 2, "m.q": 1}  # files beyond the four clean ones
DETECT = {"m.a/0006.jpg": "no_face", "m.a/0007.jpg": "unreadable", "m.c/0005.jpg": "no_face",
          "m.c/0006.jpg": "too_large", "m.c/0001.jpg": "no_face", "m.p/0001.jpg": "unreadable"}
ALIGN = {"m.b/0001.jpg": "align_failed"}


def _truth() -> dict:
    ids = {f"id_{m[2:]}": {"names": {"train": m}} for m in MIDS if m not in ("m.s2", "m.t2")}
    ids["id_s1"]["names"]["train_split"] = "m.s2"
    ids["id_t1"]["names"]["train_split"] = "m.t2"
    ids["id_o"]["names"]["lfw"] = "Ann_Lee"
    ids["id_p"]["names"]["megaface"] = "Bo_Kim"

    def img(kind, path, **kw):
        return {"kind": kind, "part": "train", "path": f"train/folder/{path}", **kw}

    noise = [img("mislabelled", "m.a/0005.jpg", true_identity="id_b"),
             img("mislabelled", "m.b/0005.jpg", true_identity="id_a"),
             img("mislabelled", "m.c/0005.jpg", true_identity="id_a"),
             img("mislabelled", "m.q/0005.jpg", true_identity="id_a"),
             img("non_face", "m.a/0006.jpg", true_identity=None),
             img("non_face", "m.b/0006.jpg", true_identity=None),
             img("corrupt", "m.a/0007.jpg", corrupt="empty"),
             img("corrupt", "m.c/0006.jpg", corrupt="garbage"),
             {"kind": "split_identity", "part": "train", "true_identity": "id_s1", "labels": ["m.s1", "m.s2"]},
             {"kind": "split_identity", "part": "train", "true_identity": "id_t1", "labels": ["m.t1", "m.t2"]},
             {"kind": "eval_overlap", "part": "train", "true_identity": "id_o", "filed_identity": "m.o",
              "eval_set": "lfw", "eval_name": "Ann_Lee"},
             {"kind": "eval_overlap", "part": "train", "true_identity": "id_p", "filed_identity": "m.p",
              "eval_set": "megaface", "eval_name": "Bo_Kim"},
             {"kind": "megaface_noisy_probe", "part": "megaface", "path": "megaface/facescrub/Bo_Kim/Bo_Kim_6.jpg"}]
    return {"noise": noise, "identities": ids}


def _manifests():
    rows = [(m, f"{m}/{i:04d}.jpg") for m in MIDS for i in range(1, 5 + EXTRA.get(m, 0))]
    detect = pd.DataFrame({"source": [s for _, s in rows], "status": [DETECT.get(s, "ok") for _, s in rows]})
    align = detect.assign(status=[DETECT.get(s, ALIGN.get(s, "ok")) for _, s in rows])
    packed = (align["status"] == "ok").to_numpy()
    label = {m: i for i, m in enumerate(MIDS)}
    keys, k = [], 0
    for p in packed:
        k += bool(p)
        keys.append(k if p else -1)
    pack = pd.DataFrame({"row": range(len(rows)), "source": detect["source"], "identity": [m for m, _ in rows],
                         "packed": packed, "reason": ["" if p else f"no_crop:{s}" for p, s in zip(packed, align["status"])],
                         "label": [label[m] if p else -1 for (m, _), p in zip(rows, packed)], "key": keys})
    return pack, detect, align


def _removals(pack: pd.DataFrame, inter_action: str = "merge") -> pd.DataFrame:
    key = dict(zip(pack["source"], pack["key"]))
    label = dict(zip(pack["source"], pack["label"]))
    out = []

    def image(src, rule, detail=""):
        out.append((key[src], str(key[src]), label[src], rule, 0.1, "image", detail))

    def identity(lab, rule, detail):
        out.append((-1, "", lab, rule, 0.9, "identity", detail))

    image("m.a/0001.jpg", "subcenter", "closest 1, dominant 0")
    image("m.a/0005.jpg", "intra")
    image("m.b/0006.jpg", "intra")
    if inter_action == "merge":
        identity(8, "inter", "merged into 7")
        identity(6, "inter", "merged into 2")
    else:
        identity(8, "inter", "same person as 7")
        for i in range(1, 5):
            image(f"m.s2/{i:04d}.jpg", "inter", "same person as 7")
        identity(6, "inter", "same person as 2")
        for i in range(1, 5):
            image(f"m.r/{i:04d}.jpg", "inter", "same person as 2")
    identity(3, "overlap", "lfw:Ann_Lee")
    for i in range(1, 5):
        image(f"m.o/{i:04d}.jpg", "overlap", "lfw:Ann_Lee")
    identity(5, "overlap", "megaface:Zed_Xu")
    for i in range(1, 6):
        image(f"m.q/{i:04d}.jpg", "overlap", "megaface:Zed_Xu")
    return pd.DataFrame(out, columns=COLUMNS)


@pytest.fixture
def inputs():
    pack, detect, align = _manifests()
    return _truth(), pack, detect, align, _removals(pack)


def test_image_kinds_by_hand(inputs):
    q = noise_quality(*inputs)["kinds"]
    m = q["mislabelled"]
    assert (m["injected"], m["caught"], m["missed"], m["recall"]) == (4, 3, 1, 0.75)
    assert m["caught_by"] == {"clean:intra": 1, "clean:overlap": 1, "detect:no_face": 1}
    assert (m["removed"], m["true_positives"], m["false_positives"]) == (3, 2, 1)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["false_positives_by"] == {"clean:subcenter": 1}
    assert m["missed_examples"] == ["m.b/0005.jpg"]

    n = q["non_face"]
    assert (n["injected"], n["caught"], n["recall"]) == (2, 2, 1.0)
    assert n["caught_by"] == {"clean:intra": 1, "detect:no_face": 1}
    assert (n["removed"], n["true_positives"], n["false_positives"], n["precision"]) == (4, 2, 2, 0.5)
    assert n["false_positives_by"] == {"align:align_failed": 1, "detect:no_face": 1}
    # the clean face MTCNN missed is the detector's loss: left out of precision_detected
    assert (n["undetected_faces"], n["precision_detected"]) == (1, round(2 / 3, 6))

    c = q["corrupt"]
    assert (c["injected"], c["caught"], c["recall"]) == (2, 2, 1.0)
    assert c["caught_by"] == {"detect:too_large": 1, "detect:unreadable": 1}
    assert (c["removed"], c["true_positives"], c["false_positives"]) == (3, 2, 1)
    assert c["precision"] == pytest.approx(2 / 3, abs=1e-6)


def test_no_removal_is_credited_twice(inputs):
    """Image decisions removed 10 images (7 rejects before cleaning, 3 by the image rules), 4 of
    them clean: each is credited to exactly one kind."""
    q = noise_quality(*inputs)
    kinds = q["kinds"]
    assert sum(kinds[k]["removed"] for k in ("mislabelled", "non_face", "corrupt")) == 10
    assert sum(kinds[k]["false_positives"] for k in ("mislabelled", "non_face", "corrupt")) == 4
    lost = q["images"]["clean_lost"]
    assert lost["by"] == {"align:align_failed": 1, "clean:overlap": 8, "clean:subcenter": 1,
                          "detect:no_face": 1, "detect:unreadable": 1}
    assert lost["total"] == 12
    assert q["images"] | {"clean_lost": None} == {"in": 52, "packed": 45, "cleaned": 33, "noise_left": 1,
                                                  "clean_lost": None}
    assert q["not_measured"] == {"megaface_noisy_probe": 1}


def test_split_and_overlap_by_hand(inputs):
    q = noise_quality(*inputs)
    s = q["kinds"]["split_identity"]
    assert (s["injected"], s["caught"], s["missed"], s["recall"]) == (2, 1, 1, 0.5)
    assert s["caught_by"] == {"inter:merge": 1}
    assert s["missed_examples"] == ["m.t1 + m.t2"]
    # two joined pairs: s1+s2 (one person), c+r (two people)
    assert (s["removed"], s["true_positives"], s["false_positives"], s["precision"]) == (2, 1, 1, 0.5)
    assert (s["decisions"], s["false_decisions"]) == (2, 1)

    o = q["kinds"]["eval_overlap"]
    assert (o["injected"], o["caught"], o["missed"], o["recall"]) == (2, 1, 1, 0.5)
    assert o["caught_by"] == {"overlap": 1} and o["missed_examples"] == ["m.p"]
    assert (o["removed"], o["true_positives"], o["false_positives"], o["precision"]) == (2, 1, 1, 0.5)
    assert o["named_right"] == 1 and o["false_positive_examples"] == ["m.q"]
    # 11 labels packed; merges leave 9 people, overlap removes 2
    assert q["identities"] == {"packed": 11, "cleaned": 7}


def test_drop_action_and_a_merged_overlap(inputs):
    truth, pack, detect, align, _ = inputs
    q = noise_quality(truth, pack, detect, align, _removals(pack, "drop"))
    s = q["kinds"]["split_identity"]
    assert s["caught_by"] == {"inter:drop": 1} and s["precision"] == 0.5
    # images dropped with a whole identity are not image decisions
    assert q["kinds"]["mislabelled"]["removed"] == 3

    # the overlapping label merged into another, which the overlap rule then removes: still caught
    rem = _removals(pack)
    rem = rem[~((rem["level"] == "identity") & (rem["label"] == 3))]
    rem = pd.concat([rem, pd.DataFrame([(-1, "", 3, "inter", 0.8, "identity", "merged into 0")], columns=COLUMNS)])
    o = noise_quality(truth, pack, detect, align, rem)["kinds"]["eval_overlap"]
    assert o["caught"] == 1  # m.o's images still all went with the overlap rule
    # ... and the overlap rule's row names the merge target: a true positive through the merge
    rem2 = pd.concat([rem, pd.DataFrame([(-1, "", 0, "overlap", 0.8, "identity", "lfw:Ann_Lee")], columns=COLUMNS)])
    o2 = noise_quality(truth, pack, detect, align, rem2)["kinds"]["eval_overlap"]
    assert (o2["true_positives"], o2["named_right"], o2["removed"]) == (1, 1, 2)


def test_nothing_removed_gives_null_precision(inputs):
    truth, pack, detect, align, _ = inputs
    q = noise_quality(truth, pack, detect, align, pd.DataFrame({c: [] for c in COLUMNS}))
    assert q["kinds"]["split_identity"]["precision"] is None
    assert q["kinds"]["eval_overlap"]["recall"] == 0.0
    assert q["kinds"]["mislabelled"]["recall"] == 0.25  # only the detect reject
    empty = noise_quality({"noise": []}, pack, detect, align, pd.DataFrame({c: [] for c in COLUMNS}))
    assert empty["kinds"]["corrupt"]["recall"] is None


def test_kept_table_is_checked(inputs):
    truth, pack, detect, align, rem = inputs
    q = noise_quality(*inputs)
    removed = set(rem["key"][rem["level"] == "image"].astype(int))
    kept = pack[pack["packed"] & ~pack["key"].isin(removed)]
    kept = pd.DataFrame({"key": kept["key"].astype(str), "label": kept["label"], "new_label": 0})
    assert noise_quality(truth, pack, detect, align, rem, kept) == q
    with pytest.raises(PipelineError, match="disagree"):
        noise_quality(truth, pack, detect, align, rem, kept.iloc[1:])


def test_bad_inputs_name_the_culprit(inputs):
    truth, pack, detect, align, rem = inputs
    bad = json.loads(json.dumps(truth))
    bad["noise"][0]["path"] = "train/folder/m.zz/0001.jpg"
    with pytest.raises(PipelineError, match="m.zz/0001.jpg"):
        noise_quality(bad, pack, detect, align, rem)
    with pytest.raises(PipelineError, match="key 999"):
        noise_quality(truth, pack, detect, align,
                      pd.concat([rem, pd.DataFrame([(0, "999", 0, "intra", 0.0, "image", "")], columns=COLUMNS)]))
    with pytest.raises(PipelineError, match="detect manifest"):
        noise_quality(truth, pack, detect.iloc[1:], align, rem)


def test_locator():
    assert Locator.for_source("data/sample", "data/sample/train/folder", "folder") == Locator("folder", "train/folder")
    assert Locator("folder", "train/folder").source("train/folder/m.x/0001.jpg", 7) == "m.x/0001.jpg"
    tsv = Locator.for_source("data/sample", "data/sample/train/ms1m.tsv", "ms1m_tsv")
    assert tsv.source("train/folder/m.x/0001.jpg", 7) == "ms1m.tsv:7"
    assert Locator.for_source("data/sample", "data/sample/train", "ms1m_tsv").source(None, 3) == "ms1m.tsv:3"
    with pytest.raises(PipelineError, match="not inside"):
        Locator.for_source("data/sample", "elsewhere/folder", "folder")
    with pytest.raises(PipelineError, match="rec"):
        Locator.for_source("data/sample", "x.rec", "rec")


def test_files_and_atomic_write(inputs, tmp_path):
    truth, pack, detect, align, rem = inputs
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    for name, df in (("pack", pack), ("detect", detect), ("align", align), ("removals", rem)):
        df.to_parquet(tmp_path / f"{name}.parquet", index=False)
    q = quality_from_files(tmp_path / "gt.json", tmp_path / "pack.parquet", tmp_path / "detect.parquet",
                           tmp_path / "align.parquet", tmp_path / "removals.parquet")
    assert q == noise_quality(*inputs)
    out = write_quality(tmp_path / "metrics" / "clean_quality.json", q)
    assert json.loads(out.read_text()) == json.loads(json.dumps(q))
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean_quality.json"]
    with pytest.raises(PipelineError, match="does not exist"):
        quality_from_files(tmp_path / "nope.json", *(tmp_path / f"{n}.parquet" for n in ("pack", "detect", "align", "removals")))


def test_paths_from_params(inputs, tmp_path):
    from types import SimpleNamespace as NS

    from arcpipe.clean.quality import quality_from_params

    truth, pack, detect, align, rem = inputs
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample/ground_truth.json").write_text(json.dumps(truth))
    for folder, df in (("pack", pack), ("detect/train", detect), ("align/train", align)):
        (tmp_path / folder).mkdir(parents=True)
        df.to_parquet(tmp_path / folder / "manifest.parquet", index=False)
    (tmp_path / "clean").mkdir()
    rem.to_parquet(tmp_path / "clean/removals.parquet", index=False)
    removed = set(rem["key"][rem["level"] == "image"].astype(int))
    kept = pack[pack["packed"] & ~pack["key"].isin(removed)]
    kept[["key", "label"]].to_parquet(tmp_path / "clean/kept.parquet", index=False)
    t = str(tmp_path)
    params = NS(pack=NS(dataset="train", out_dir=f"{t}/pack"), sample=NS(out_dir=f"{t}/sample"),
                detect=NS(out_dir=f"{t}/detect", datasets={"train": NS(source=f"{t}/sample/train/folder", format="folder")}),
                align=NS(out_dir=f"{t}/align"), clean=NS(out_dir=f"{t}/clean"))
    assert quality_from_params(params) == noise_quality(*inputs)
