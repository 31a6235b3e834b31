"""MTCNN presets per data set (as the insightface preparation scripts ran them) and the
centre-crop fallback box."""
from __future__ import annotations

import numpy as np
import pytest

from arcpipe.detect import PRESETS, Preset, fallback_box, preset_for


def test_presets_match_the_scripts_table():
    assert set(PRESETS) == {"lfw", "ytf", "ms1m", "megaface", "deploy"}
    assert preset_for("lfw") == Preset(20, (0.6, 0.7, 0.9), 0.85, "center_crop")
    assert preset_for("ytf").thresholds == (0.6, 0.7, 0.4) and preset_for("ytf").factor == 0.85
    ms1m = preset_for("ms1m")
    assert ms1m.minsize == "fifth" and ms1m.thresholds == (0.6, 0.6, 0.3) and ms1m.no_face == "drop"
    mega = preset_for("megaface")
    assert mega.minsize == 100 and mega.thresholds == (0.6, 0.7, 0.7) and mega.no_face == "given_box"
    assert preset_for("deploy")[:3] == (20, (0.6, 0.7, 0.8), 0.709)


def test_presets_agree_with_the_params_schema():
    from arcpipe.params.detect import NoFacePolicy, Preset as PresetName
    from typing import get_args

    assert set(get_args(PresetName)) == set(PRESETS)
    assert {p.no_face for p in PRESETS.values()} <= set(get_args(NoFacePolicy))


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="deploy, lfw, megaface, ms1m, ytf"):
        preset_for("casia")


@pytest.mark.parametrize("shape", [(250, 250), (250, 250, 3), (112, 96), (1000, 600), (30, 20), (1, 1)])
def test_fallback_box_is_the_inset_plus_margin(shape):
    h, w = shape[:2]
    x1, y1, x2, y2 = fallback_box(shape)
    # by hand: inset int(6.25%) per side, then 22 px more on each side, clipped to the image
    dx, dy = int(w * 0.0625), int(h * 0.0625)
    assert (x1, y1, x2, y2) == (max(dx - 22, 0), max(dy - 22, 0), min(w - dx + 22, w), min(h - dy + 22, h))
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert all(isinstance(v, int) for v in (x1, y1, x2, y2))


def test_fallback_box_on_lfw_size_and_margin():
    # 250x250: inset 15, margin 44 -> the whole image; a smaller margin keeps part of the inset
    assert fallback_box((250, 250, 3)) == (0, 0, 250, 250)
    assert fallback_box((250, 250), margin=10) == (10, 10, 240, 240)
    assert fallback_box((1000, 800), margin=0) == (50, 62, 750, 938)
    assert np.all(np.asarray(fallback_box((2000, 2000))) == [103, 103, 1897, 1897])
