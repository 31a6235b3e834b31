"""The sample's training views are faces the MS1M detector finds (arcpipe.sample.detectable):
checked with the real MTCNN on real renders, a view it misses is drawn again from a stream of its
own, and one that stays missed is counted, not hidden."""
from __future__ import annotations

import numpy as np

from arcpipe.params.sample import SampleParams
from arcpipe.sample.base_faces import non_face_images
from arcpipe.sample.detectable import draw_detectable, found
from arcpipe.sample.generate import plan_sample, stream
from arcpipe.sample.render import render_non_face


def test_views_are_checked_and_a_non_face_stays_missed():
    plan = plan_sample(SampleParams(scale=0.5, images_per_identity=6, megaface_distractors=24)).plan
    key = sorted(plan.specs)[0]
    requests = [("train", i) for i in range(6)]
    got = draw_detectable(lambda parts: plan.view(key, "ms1m", *parts), requests, redraws=4)
    assert all(ok for *_, ok in got)
    assert found([data for _, data, _, _ in got]) == [True] * 6
    for (v, data, parts, _), req in zip(got, requests):
        assert parts[:2] == req and (len(parts) == 2 or parts[2:3] == ("redraw",))
        assert plan.view(key, "ms1m", *parts).jpeg() == data   # the recorded parts re-create it

    # a non-face: every redraw is checked and missed; the last draw comes back, marked
    name, pic = non_face_images(None)[0]
    calls = []

    def non_face(parts):
        calls.append(parts)
        return render_non_face(pic, stream(0, "test-non-face", *parts))

    [(v, data, parts, ok)] = draw_detectable(non_face, [("x", 0)], redraws=2)
    assert not ok and parts == ("x", 0, "redraw", 2) and calls == [("x", 0), ("x", 0, "redraw", 1), parts]
    assert data == v.jpeg() and not found([data])[0]

    # redraws 0: the first draws, unchecked
    [(_, _, parts, ok)] = draw_detectable(non_face, [("y", 1)], redraws=0)
    assert ok and parts == ("y", 1)


def test_found_uses_the_decoded_jpeg():
    plan = plan_sample(SampleParams(scale=0.5, images_per_identity=6, megaface_distractors=24)).plan
    key = sorted(plan.specs)[1]
    v = plan.view(key, "ms1m", "train", 0)
    grey = v.image.copy()
    grey[:] = np.uint8(128)  # the same size, no face
    from arcpipe.imageio import encode_jpeg_bgr

    assert found([encode_jpeg_bgr(grey, 90)]) == [False]
