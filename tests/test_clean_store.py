"""The feature store: what the writer appends, the reader returns (as unit float16 rows), in
bounded reads; a store that does not hold together is one line naming the file."""
import numpy as np
import pytest

from arcpipe.clean.store import FEATURES, INDEX, FeatureStore, FeatureWriter
from arcpipe.errors import PipelineError


def _write(path, n=1000, dim=16, batch=300):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, dim)).astype(np.float32) * 3
    with FeatureWriter(path, dim, meta={"model": "test"}) as w:
        for s in range(0, n, batch):
            w.append([f"k{i}" for i in range(s, min(n, s + batch))], np.arange(s, min(n, s + batch)) // 10,
                     feats[s:s + batch])
    return feats


def test_round_trip_in_chunks(tmp_path):
    feats = _write(tmp_path / "f")
    st = FeatureStore(tmp_path / "f")
    assert (st.count, st.dim) == (1000, 16) and st.meta["model"] == "test"
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    got = np.concatenate([c for _, c in st.chunks(rows=128)])
    np.testing.assert_allclose(got, unit, atol=1e-3)
    np.testing.assert_allclose(st.index["norm"], np.linalg.norm(feats, axis=1), rtol=1e-6)
    assert st.labels[-1] == 99 and st.keys[5] == "k5"
    np.testing.assert_array_equal(np.load(tmp_path / "f" / FEATURES, mmap_mode="r")[10:20], st.read(10, 20, np.float16))
    st.check_keys([f"k{i}" for i in range(1000)], "the pack")
    with pytest.raises(PipelineError, match="row 3 has key 'k3', the pack has 'x'"):
        st.check_keys([f"k{i}" for i in range(3)] + ["x"] + [f"k{i}" for i in range(4, 1000)], "the pack")
    with pytest.raises(PipelineError, match="1000 features, the pack has 999"):
        st.check_keys([f"k{i}" for i in range(999)], "the pack")


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(PipelineError, match=r"features of shape \(2, 8\), expected \(n, 16\)"):
        with FeatureWriter(tmp_path / "f", 16) as w:
            w.append(["a", "b"], [0, 0], np.ones((2, 8)))
    assert not (tmp_path / "f").exists() and not list(tmp_path.iterdir())
    with pytest.raises(PipelineError, match="non-finite feature \\(key 'b'\\)"):
        with FeatureWriter(tmp_path / "f", 2) as w:
            w.append(["a", "b"], [0, 0], np.array([[1.0, 0.0], [np.nan, 1.0]]))
    assert not list(tmp_path.iterdir())


def test_a_broken_store_is_named(tmp_path):
    _write(tmp_path / "f")
    with open(tmp_path / "f" / FEATURES, "r+b") as f:
        f.truncate(5000)
    with pytest.raises(PipelineError, match="features.npy: 5000 bytes, expected .* \\(truncated\\?\\)"):
        FeatureStore(tmp_path / "f")
    _write(tmp_path / "g")
    (tmp_path / "g" / INDEX).unlink()
    with pytest.raises(PipelineError, match="not a feature store \\(index.parquet is missing\\)"):
        FeatureStore(tmp_path / "g")
