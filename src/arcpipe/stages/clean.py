"""Clean the training pack MS1MV2-style with the bootstrap model's features: data/clean/.

    python scripts/clean.py [--params params.yaml ...]

Reads clean.features_dir (the features stage's store of the raw pack, checked against
clean.pack_dir's manifest: the same images in key order, under the same labels), the bootstrap
head's sub-centres clean.bootstrap_dir/centres.npy (only when the subcenter rule is on) and each
clean.eval_features entry (an evaluation set's store and identities.parquet: its identity centres
are the means of each identity's unit features). Runs the rules of clean.order that are enabled
(arcpipe.clean.rules) and writes clean.out_dir, whole or not at all:

    kept.parquet        one row per kept image, in store order: row (store row), key (the raw
                        pack's record key), old_label, new_label (contiguous 0..C'-1)
    label_map.parquet   one row per raw label: label, target (after merges), new (-1: removed),
                        identity (the pack's name for it), images (in), kept (its images kept)
    removals.parquet    the removal table (arcpipe.clean.rules.COLUMNS): one row per removed image
                        and per removed or merged identity, with the rule and its score
    summary.json        counts: images in = kept + removed (per rule), identities in = out + removed,
                        each rule's params; no wall-clock time (that goes to the log)
    intra_similarity.png, nearest_centre.png   the thresholds against the store (arcpipe.clean.plots)

and then clean.metrics (cleaning/metrics.json): images and identities in and out, removals per rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..clean.inputs import check_store_against_pack, load_eval_set, load_subcentres
from ..clean.plots import nearest_centre_histogram, plot_data, similarity_histogram
from ..clean.rules import IDENTITY, IMAGE, clean, rules_from_params
from ..clean.store import FeatureStore
from ..errors import PipelineError
from ..fsutil import atomic_path, write_json_atomic

__all__ = ["run"]

OUTPUTS = ("kept.parquet", "label_map.parquet", "removals.parquet", "summary.json", "intra_similarity.png",
           "nearest_centre.png")


def run(ctx) -> dict:
    p = ctx.params.clean
    try:
        rules = rules_from_params(p)
    except ValueError as e:
        raise PipelineError(f"clean: {e}") from None
    names = [r.name for r in rules]
    features = ctx.require_path("clean.features_dir", p.features_dir)
    pack_dir = ctx.require_path("clean.pack_dir", p.pack_dir)
    store = FeatureStore(features)
    if store.count == 0:
        raise PipelineError(f"{features}: the feature store holds no image; nothing to clean")
    packed = check_store_against_pack(store, pack_dir)
    subcentres, centres_file = None, None
    if "subcenter" in names:
        centres_file = Path(p.bootstrap_dir) / "centres.npy"
        subcentres = load_subcentres(centres_file, store)
    eval_sets = []
    for name, folder in p.eval_features.items():
        ctx.require_path(f"clean.eval_features.{name}", folder)
        with ctx.working_on(f"evaluation set {name}"):
            eval_sets.append(load_eval_set(name, folder, chunk=p.chunk))
    if "overlap" in names and not eval_sets:
        ctx.log.warning("the overlap rule is on but clean.eval_features is empty: it removes nothing")

    with ctx.working_on(f"rules {', '.join(names) or '(none)'}"):
        result = clean(store, rules, subcentres=subcentres, eval_sets=eval_sets, chunk=p.chunk)
    for rule, s in result.seconds.items():
        ctx.log.info("rule %s: %.3f s", rule, s)
    with ctx.working_on("the histograms"):
        data = plot_data(store, eval_sets, p.intra.robust_cut if p.intra.enabled else -1.0,
                         p.intra.passes if p.intra.enabled else 0, chunk=p.chunk)

    counts = _counts(ctx, result, store, names, centres_file, subcentres, eval_sets, pack_dir)
    out = Path(p.out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        _write_tables(tmp, result, store, packed)
        kept = np.zeros(store.count, dtype=bool)
        kept[result.rows] = True
        similarity_histogram(data.intra_cos, kept, p.intra.min_cos if p.intra.enabled else None,
                             tmp / "intra_similarity.png")
        nearest_centre_histogram(data.nearest_identity, data.nearest_eval,
                                 p.inter.max_cos if p.inter.enabled else None,
                                 p.overlap.max_cos if p.overlap.enabled and eval_sets else None,
                                 tmp / "nearest_centre.png")
        ctx.write_summary(tmp / "summary.json", counts)
    metrics = {
        "images_in": counts["in"], "images_out": counts["out"],
        "identities_in": counts["identities_in"], "identities_out": counts["identities_out"],
        "removed": {r: {"images": v["images"], "identities": v["identities"]} for r, v in counts["rules"].items()}}
    if p.ground_truth:
        from ..clean.quality import quality_from_params

        ctx.require_path("clean.ground_truth", p.ground_truth)
        with ctx.working_on(f"precision and recall against {p.ground_truth}"):
            metrics["quality"] = quality_from_params(ctx.params)
        for kind, q in metrics["quality"].get("kinds", {}).items():
            ctx.log.info("noise %s: precision %s, recall %s", kind, q.get("precision"), q.get("recall"))
    write_json_atomic(p.metrics, metrics)
    ctx.log.info("%d of %d images kept, %d of %d identities; removed %s -> %s", counts["out"], counts["in"],
                 counts["identities_out"], counts["identities_in"], counts["rejected"], out)
    return counts


def _counts(ctx, result, store, names, centres_file, subcentres, eval_sets, pack_dir) -> dict:
    s = result.summary
    t = result.removed
    image_rows = int((t["level"] == IMAGE).sum())
    identity_rows = int((t["level"] == IDENTITY).sum())
    if s["images_in"] != s["images_kept"] + image_rows or s["identities_in"] != s["identities_kept"] + identity_rows:
        raise RuntimeError(f"the removal table does not reconcile: {s['images_in']} images in, {s['images_kept']} "
                           f"kept, {image_rows} removed; {s['identities_in']} identities in, "
                           f"{s['identities_kept']} kept, {identity_rows} removed")
    rules = s["rules"]
    return {
        "features_dir": str(store.path), "pack_dir": str(pack_dir),
        "subcentres": None if subcentres is None else {"file": str(centres_file), "shape": list(subcentres.shape)},
        "eval_sets": {e.name: {"dir": str(ctx.params.clean.eval_features[e.name]), "identities": len(e.identities)}
                      for e in eval_sets},
        "in": s["images_in"], "out": s["images_kept"],
        "rejected": {r: v["images"] for r, v in rules.items()},
        "identities_in": s["identities_in"], "identities_out": s["identities_kept"],
        "identities_removed": {r: v["identities"] for r, v in rules.items()},
        "merged_identities": int(((t["rule"] == "inter") & (t["level"] == IDENTITY)
                                  & t["detail"].str.startswith("merged into")).sum()),
        "order": names, "disabled": [r for r in ctx.params.clean.order if r not in names],
        "rules": rules, "chunk": ctx.params.clean.chunk,
    }


def _write_tables(out: Path, result, store: FeatureStore, packed: pd.DataFrame) -> None:
    old = store.labels
    keys = packed["key"].to_numpy(np.int64)
    pd.DataFrame({"row": result.rows.astype(np.int64), "key": keys[result.rows],
                  "old_label": old[result.rows], "new_label": result.labels.astype(np.int64)}
                 ).to_parquet(out / "kept.parquet", index=False)
    lm = result.label_map.copy()
    if "identity" in packed.columns:
        name_of = packed.drop_duplicates("label").set_index("label")["identity"]
        lm["identity"] = lm["label"].map(name_of).fillna("").astype(str).to_numpy()
    else:
        lm["identity"] = ""
    size = int(lm["label"].max()) + 1 if len(lm) else 0
    lm["images"] = np.bincount(old, minlength=size)[lm["label"]].astype(np.int64)
    lm["kept"] = np.bincount(old[result.rows], minlength=size)[lm["label"]].astype(np.int64)
    lm.to_parquet(out / "label_map.parquet", index=False)
    result.removed.to_parquet(out / "removals.parquet", index=False)
