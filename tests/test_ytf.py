"""YTF: mean-of-frames video features, official splits as folds, runner on an aligned frame set."""
import cv2
import numpy as np
import pandas as pd
import pytest

from arcpipe.errors import PipelineError
from arcpipe.evaluate.ytf import evaluate_ytf, read_splits, run_ytf, video_features, video_of
from arcpipe.params.evaluate_bench import YTFParams


def slow_10fold(v1, v2, same):
    """The protocol written out: normalise, squared distance, per split best train threshold."""
    def n(x):
        return x / np.linalg.norm(x)
    d = np.array([np.sum((n(a) - n(b)) ** 2) for a, b in zip(v1, v2)])
    folds = np.array_split(np.arange(len(same)), 10)
    th = np.arange(0, 4, 0.01)
    accs = []
    for f in folds:
        train = np.setdiff1d(np.arange(len(same)), f)
        best, best_acc = 0, -1
        for t in th:
            acc = np.mean((d[train] < t) == same[train])
            if acc > best_acc:
                best, best_acc = t, acc
        accs.append(np.mean((d[f] < best) == same[f]))
    return accs


def test_video_mean_and_protocol_match_loops():
    rng = np.random.default_rng(0)
    n_vid, d = 60, 12
    frames = rng.standard_normal((700, d)) * rng.uniform(0.5, 4, (700, 1))
    vidx = rng.integers(0, n_vid, 700)
    vf, cnt = video_features(frames, vidx, n_vid + 1, normalize_frames=True)
    for v in range(n_vid):
        sel = frames[vidx == v]
        np.testing.assert_allclose(vf[v], (sel / np.linalg.norm(sel, axis=1, keepdims=True)).mean(0), rtol=1e-12)
    assert cnt[n_vid] == 0 and not vf[n_vid].any()
    raw, _ = video_features(frames, vidx, n_vid, normalize_frames=False)
    np.testing.assert_allclose(raw[3], frames[vidx == 3].mean(0), rtol=1e-12)

    identity = rng.integers(0, 15, n_vid)
    vf = vf[:n_vid] + rng.standard_normal((15, d))[identity] * 0.8
    a = rng.integers(0, n_vid, 200)
    b = rng.integers(0, n_vid, 200)
    same = identity[a] == identity[b]
    res = evaluate_ytf(vf[a], vf[b], same)
    assert res["fold_accuracy"] == pytest.approx(slow_10fold(vf[a], vf[b], same), abs=1e-12)
    assert res["pairs"] == 200 and 0.5 < res["accuracy"] <= 1


def test_read_splits_and_video_names(tmp_path):
    p = tmp_path / "splits.txt"
    p.write_text("split number, first name, second name, match (1 if match), same (1 if same)\n"
                 "1, Ann/0, Ann/1, 1, 1\n1, Ann/0, Bob/3, 0, 0\n2, Bob/3, Bob/4, 1, 0\n")
    with pytest.raises(PipelineError, match=r"splits.txt:4: match 1 and same 0"):
        read_splits(p)
    p.write_text("1, Ann/0, Ann/1, 1, 1\n2, Ann/0\n")
    with pytest.raises(PipelineError, match=r"splits.txt:2: expected"):
        read_splits(p)
    assert video_of("data/sample/ytf/frame_images_DB/Ann/0/0.123.jpg") == "Ann/0"


def _write_ytf(tmp_path):
    """An aligned frame set (6 people x 3 videos x 4 frames, P5/2 without frames) and splits.txt."""
    from arcpipe.recordio import IRHeader, RecordWriter, pack

    rng = np.random.default_rng(2)
    d = tmp_path / "frames"
    d.mkdir()
    people = [f"P{i}" for i in range(6)]
    shade = {p: rng.integers(30, 220, 3) for p in people}
    rows, key = [], 0
    with RecordWriter(d / "faces.rec", d / "faces.idx") as w:
        for person in people:
            for v in range(3):
                if person == "P5" and v == 2:
                    continue            # a video without frames
                for fr in range(4):
                    img = np.clip(shade[person] + rng.integers(-50, 50, (112, 112, 3)), 0, 255).astype(np.uint8)
                    _, jpg = cv2.imencode(".jpg", img)
                    w.write(key, pack(IRHeader(0, 0.0, key, 0), jpg.tobytes()))
                    rows.append({"row": key, "source": f"ytf/{person}/{v}/{v}.{fr}.jpg", "identity": person,
                                 "label": -1, "status": "ok", "reason": "", "key": key})
                    key += 1
    pd.DataFrame(rows).to_parquet(d / "manifest.parquet")
    lines = ["split number, first name, second name, match (1 if match), same (1 if same)"]
    for s in range(1, 11):
        for j in range(4):
            p = people[(s + j) % 6]
            q = people[(s + 2 * j + 1) % 6] if j % 2 else p
            lines.append(f"{s}, {p}/{j % 3}, {q}/{(j + 1) % 3}, {int(p == q)}, {int(p == q)}")
    (tmp_path / "splits.txt").write_text("\n".join(lines) + "\n")
    return d, tmp_path / "splits.txt"


def test_run_ytf_on_aligned_frames(tmp_path):
    d, _ = _write_ytf(tmp_path)

    class Mean:
        batch_size = 5

        def embed(self, rgb, flip=True):
            return rgb.reshape(len(rgb), -1, 3).mean(1).astype(np.float32) - 128

    out = run_ytf(YTFParams(frames=str(d), pairs=str(tmp_path / "splits.txt"), max_frames=3), Mean())
    c = out["counts"]
    assert c["frames_used"] == 17 * 3 and c["videos_without_frames"] == 1
    assert c["pairs_skipped_no_frames"] >= 1 and "P5/2 has no aligned frame" in "".join(out["problems"])
    m = out["metrics"]
    assert m["pairs"] == 40 - c["pairs_skipped_no_frames"] and len(m["fold_accuracy"]) == 10
    assert m["accuracy"] > 0.6
    # the frames' features, keyed by their aligned-set source, with their video
    e = out["embeddings"].arrays()
    assert e["key"].shape == (17 * 3,) and e["embedding"].dtype == np.float16
    assert [k.split("/", 1)[1].rsplit("/", 1)[0] for k in e["key"]] == e["video"].tolist()
    from arcpipe.align import AlignedSet

    s = AlignedSet(d)
    raw = Mean().embed(np.stack([s.read_rgb(int(k)) for k in e["record"]]))
    np.testing.assert_allclose(e["embedding"].astype(np.float32) * e["norm"][:, None], raw, rtol=2e-3, atol=1e-3)
