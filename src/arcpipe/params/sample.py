"""params.yaml `sample`: the embedded, generated sample data set.

Every count below is multiplied by `scale` (rounded, at least 1 where the part needs one):
`scale: 4` is a four times larger sample, everything else unchanged.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from .base import NonNegInt, PositiveFloat, PositiveInt, Section


class SampleNoiseParams(Section):
    """Known noise injected into the training set (folder and TSV alike), all in ground_truth.json.

    The counts let a precision or recall of 0.9 mean something (at least 10 of each training kind:
    one miss of 10 is 0.9, of 3 it was 0.67): about 1.6% of the 1,560 images mislabelled, and
    of the 65 identities 10 split and 10 shared with an evaluation set.
    """

    mislabelled: NonNegInt = 25      # an image of identity A filed under B (~1% of the images)
    split_identities: NonNegInt = 10  # one identity's images filed under two labels
    # training identities that are also LFW / FaceScrub identities (FaceScrub takes at most half
    # its probes, LFW the rest: with 6 probes, 3 FaceScrub and 7 LFW)
    eval_overlap: NonNegInt = 10
    non_faces: NonNegInt = 12        # real non-face pictures filed under an identity
    corrupt: NonNegInt = 12          # zero-byte, truncated JPEG, garbage bytes (TSV: empty, cut, bad base64), 4 each
    megaface_noisy_probes: NonNegInt = 2       # FaceScrub images of someone else (facescrub_noises.txt)
    megaface_noisy_distractors: NonNegInt = 2  # distractors that show a probe identity (megaface_noises.txt)


class SampleParams(Section):
    out_dir: str = "data/sample"
    seed: NonNegInt = 0
    scale: PositiveFloat = 1.0
    # training identities: the sample's 65 is one to each training base face, so no two training
    # identities look alike except the injected noise (split identities, overlaps) the cleaning
    # stage must find; more identities than base faces share them, several to a base face
    identities: PositiveInt = 65
    images_per_identity: PositiveInt = 24
    # a training view (clean or mislabelled) that MTCNN at the MS1M preset misses is drawn again,
    # up to this many times, as MS-Celeb-1M's images are all faces a detector found
    # (arcpipe.sample.detectable); 0: every first draw, unchecked
    detector_redraws: NonNegInt = 8
    # base faces kept for the evaluation sets (not scaled: the pool of real faces is fixed); the
    # rest make the training identities. 0: evaluation identities share the training base faces
    eval_bases: NonNegInt = 30
    same_base_identities: PositiveInt = 2  # LFW and IJB identities made from each evaluation base face
    lfw_identities: int = Field(default=60, ge=2)
    lfw_min_images: int = Field(default=4, ge=2)   # images per LFW identity: min..max inclusive
    lfw_max_images: int = Field(default=8, ge=2)
    lfw_pairs_per_fold: PositiveInt = 30   # matched pairs per fold (and as many mismatched)
    # share of each fold's mismatched pairs between two identities of the same base face
    lfw_same_base_pairs: float = Field(default=0.3, ge=0.0, le=1.0)
    ijb_subjects: int = Field(default=16, ge=2)
    ijb_templates_per_subject: int = Field(default=5, ge=2)
    megaface_probes: PositiveInt = 6
    megaface_images_per_probe: PositiveInt = 5
    megaface_distractors: PositiveInt = 100
    noise: SampleNoiseParams = Field(default_factory=SampleNoiseParams)

    @model_validator(mode="after")
    def _ranges(self) -> "SampleParams":
        if self.lfw_max_images < self.lfw_min_images:
            raise ValueError(f"lfw_max_images ({self.lfw_max_images}) must be at least lfw_min_images ({self.lfw_min_images})")
        return self
