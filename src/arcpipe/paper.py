"""The ArcFace paper's numbers (arXiv 1801.07698) as data, with the setting each refers to.

The one place the report takes the paper's table from. Values are percentages. `key` is the
benchmark name our metrics files use (metrics/<key>.json) and `metric` the measured quantity.
PROTOCOLS holds the evaluation setting each benchmark's paper number was measured in (the full
pair sets, the official folds, 1M MegaFace distractors): the report puts a difference beside a
paper number only when our measurement was made in that same setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Setting", "PaperNumber", "Protocol", "SETTINGS", "PAPER_NUMBERS", "PROTOCOLS", "MAIN_SETTING",
           "numbers_for", "count_text"]


@dataclass(frozen=True)
class Setting:
    id: str
    training_data: str
    backbone: str
    loss: str
    margin: float
    scale: float
    source: str

    def describe(self) -> str:
        return f"{self.training_data}, {self.backbone}, {self.loss} m={self.margin:g}, s={self.scale:g}"


def count_text(n: int) -> str:
    """6000 -> '6,000'; 1000000 -> '1M' (how the paper names its distractor set)."""
    return "1M" if n == 1_000_000 else f"{n:,}"


@dataclass(frozen=True)
class Protocol:
    """The evaluation setting of a benchmark as the paper measured it (None: not part of it)."""
    pairs: Optional[int] = None         # verification / video pairs; IJB: template pairs
    folds: Optional[int] = None         # the official folds of the pairs list
    distractors: Optional[int] = None   # MegaFace distractors
    pair_unit: str = "pairs"            # how pairs are named: "pairs", "video pairs", "template pairs"

    def describe(self) -> str:
        parts = []
        if self.pairs is not None:
            parts.append(f"{count_text(self.pairs)} {self.pair_unit}")
        if self.folds is not None:
            parts.append(f"the official {self.folds} folds")
        if self.distractors is not None:
            parts.append(f"{count_text(self.distractors)} distractors")
        return ", ".join(parts)


@dataclass(frozen=True)
class PaperNumber:
    key: str            # benchmark: lfw, cfp_fp, agedb_30, calfw, cplfw, ytf, megaface, ijbb, ijbc
    metric: str         # acc | id_rank1_refined | ver_tar@1e-6_refined | tar@1e-4
    label: str          # how the table names it
    value: float        # percent
    setting: str        # Setting.id
    uncertain: bool = False
    note: str = ""


MAIN_SETTING = "ms1mv2-r100-arcface"

SETTINGS = {
    MAIN_SETTING: Setting(MAIN_SETTING, "MS1MV2", "ResNet100", "ArcFace", 0.5, 64,
                          "ArcFace paper (arXiv 1801.07698), main results"),
    "casia-r50-arcface": Setting("casia-r50-arcface", "CASIA-WebFace", "ResNet50", "ArcFace", 0.5, 64,
                                 "ArcFace paper (arXiv 1801.07698), loss ablation table"),
}

PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber("lfw", "acc", "LFW accuracy", 99.83, MAIN_SETTING),
    PaperNumber("ytf", "acc", "YTF accuracy", 98.02, MAIN_SETTING),
    PaperNumber("calfw", "acc", "CALFW accuracy", 95.45, MAIN_SETTING),
    PaperNumber("cplfw", "acc", "CPLFW accuracy", 92.08, MAIN_SETTING),
    PaperNumber("cfp_fp", "acc", "CFP-FP accuracy", 98.27, MAIN_SETTING, uncertain=True,
                note="model zoo figure, uncertain"),
    PaperNumber("agedb_30", "acc", "AgeDB-30 accuracy", 98.28, MAIN_SETTING, uncertain=True,
                note="model zoo figure, uncertain"),
    PaperNumber("megaface", "id_rank1_refined", "MegaFace rank-1 Id (refined)", 98.35, MAIN_SETTING),
    PaperNumber("megaface", "ver_tar@1e-6_refined", "MegaFace Ver TAR@FAR=1e-6 (refined)", 98.48, MAIN_SETTING),
    PaperNumber("ijbb", "tar@1e-4", "IJB-B 1:1 TAR@FAR=1e-4", 94.2, MAIN_SETTING),
    PaperNumber("ijbc", "tar@1e-4", "IJB-C 1:1 TAR@FAR=1e-4", 95.6, MAIN_SETTING,
                note="arcface_torch today: 96.37 (r100), 95.97 (r50)"),
    PaperNumber("lfw", "acc", "LFW accuracy", 99.53, "casia-r50-arcface"),
    PaperNumber("cfp_fp", "acc", "CFP-FP accuracy", 95.56, "casia-r50-arcface"),
    PaperNumber("agedb_30", "acc", "AgeDB-30 accuracy", 95.15, "casia-r50-arcface"),
)


# ANCHORS: LFW, CALFW, CPLFW, AgeDB-30 6,000 pairs, CFP-FP/FF 7,000, each in 10 folds; YTF 5,000
# video pairs in 10 splits; MegaFace 1M distractors; IJB-B 8,010,270 and IJB-C 15,658,489 template pairs.
PROTOCOLS: dict[str, Protocol] = {
    "lfw": Protocol(pairs=6000, folds=10),
    "calfw": Protocol(pairs=6000, folds=10),
    "cplfw": Protocol(pairs=6000, folds=10),
    "agedb_30": Protocol(pairs=6000, folds=10),
    "cfp_fp": Protocol(pairs=7000, folds=10),
    "cfp_ff": Protocol(pairs=7000, folds=10),
    "ytf": Protocol(pairs=5000, folds=10, pair_unit="video pairs"),
    "megaface": Protocol(distractors=1_000_000),
    "ijbb": Protocol(pairs=8_010_270, pair_unit="template pairs"),
    "ijbc": Protocol(pairs=15_658_489, pair_unit="template pairs"),
}


def numbers_for(setting: str = MAIN_SETTING) -> list[PaperNumber]:
    return [n for n in PAPER_NUMBERS if n.setting == setting]
