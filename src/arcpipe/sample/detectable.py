"""Training views a face detector finds, as in MS-Celeb-1M.

MS-Celeb-1M's images are the crops of a face detector, so a clean MS1M photo is, by how the data
set was made, one in which a detector finds the face. The sample's training views are drawn the
same way: each is checked, as its JPEG bytes, with the project's MTCNN at the settings the MS1M
preparation ran it with (the `ms1m` preset, the detect stage's default min_face_score), and one
it misses is drawn again from a stream of its own (parts + ("redraw", r)), up to a limit. The
recipe of every noisy item names the parts that were kept, so `Plan.render` re-creates it.

Without this about 5% of the clean views (a hard light, a blur, a hat on a 25 px original) were
faces MTCNN could not find, and the detect stage's drop of them read as non-faces the pipeline
removed by mistake, although the data set it imitates could not contain them.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..imageio import decode_image

if TYPE_CHECKING:
    from .render import View

PRESET = "ms1m"
# The detect stage keeps a face of score >= min_face_score (0.5 by default); the generator asks
# for a little more, so that a view it keeps is not one whose fate turns on the last bits of a
# score (another batch, another CPU).
MIN_SCORE = 0.6
BATCH = 32


@lru_cache(maxsize=1)
def _detector():
    from ..detect import MTCNN, preset_for

    p = preset_for(PRESET)
    return MTCNN(device="cpu", minsize=p.minsize, thresholds=p.thresholds, factor=p.factor)


def found(jpegs: Sequence[bytes]) -> list[bool]:
    """For each JPEG: does the detect stage's rule (the MS1M preset, the chosen face's score)
    find a face in it, with MIN_SCORE to spare."""
    from ..detect import keep_face

    out: list[bool] = []
    for start in range(0, len(jpegs), BATCH):
        images = [decode_image(b).image for b in jpegs[start:start + BATCH]]
        out += [keep_face(det, img.shape, MIN_SCORE)[1] for img, det in zip(images, _detector().detect(images))]
    return out


def draw_detectable(render: Callable[[tuple], "View"], requests: Sequence[tuple],
                    redraws: int) -> list[tuple["View", bytes, tuple, bool]]:
    """Render every request (a tuple of stream parts) and redraw the ones the detector misses.

    Returns, per request and in order, (view, its JPEG bytes, the parts that made it, found). A
    view still missed after `redraws` new draws is kept as its last draw, found False: the caller
    counts it. redraws 0 keeps every first draw unchecked (found True)."""
    parts = [tuple(r) for r in requests]
    views = [render(p) for p in parts]
    data = [v.jpeg() for v in views]
    ok = [True] * len(parts)
    todo = list(range(len(parts))) if redraws > 0 else []
    for r in range(redraws + 1):
        if not todo:
            break
        missed = [i for i, hit in zip(todo, found([data[i] for i in todo])) if not hit]
        if r == redraws:
            for i in missed:
                ok[i] = False
            break
        for i in missed:
            parts[i] = tuple(requests[i]) + ("redraw", r + 1)
            views[i] = render(parts[i])
            data[i] = views[i].jpeg()
        todo = missed
    return list(zip(views, data, parts, ok))
