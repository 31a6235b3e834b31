"""Five-point alignment to the ArcFace template, and the aligned-face set the align stage writes.

    transform      the template, the similarity transform, warp, norm_crop, crop_box
    aligned_set    AlignedSet: data/align/<name>/ (faces.rec/.idx + manifest) as later stages read it
    crops          a manifest row -> its aligned JPEG (the align stage's worker)
    contact_sheet  crops and rejects in one image, to check by eye

The stage itself is arcpipe.stages.align.
"""
from .aligned_set import AlignedSet
from .transform import (ARCFACE_TEMPLATE, check_size, crop_box, estimate_norm, estimate_norm_batch, landmarks68_to_5,
                       norm_crop, similarity_lstsq, template, transform_points, warp)

__all__ = ["AlignedSet", "ARCFACE_TEMPLATE", "check_size", "crop_box", "estimate_norm", "estimate_norm_batch",
           "landmarks68_to_5", "norm_crop", "similarity_lstsq", "template", "transform_points", "warp"]
