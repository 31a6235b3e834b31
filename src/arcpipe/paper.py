"""The ArcFace paper's numbers (arXiv 1801.07698) as data, with the setting each refers to.

The one place the report takes the paper's table from. Values are percentages. `key` is the
benchmark name our metrics files use (metrics/<key>.json) and `metric` the measured quantity.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Setting", "PaperNumber", "SETTINGS", "PAPER_NUMBERS", "MAIN_SETTING", "numbers_for"]


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
    PaperNumber("megaface", "id_rank1_refined", "MegaFace rank-1 Id (refined, 1M distractors)", 98.35, MAIN_SETTING),
    PaperNumber("megaface", "ver_tar@1e-6_refined", "MegaFace Ver TAR@FAR=1e-6 (refined)", 98.48, MAIN_SETTING),
    PaperNumber("ijbb", "tar@1e-4", "IJB-B 1:1 TAR@FAR=1e-4", 94.2, MAIN_SETTING),
    PaperNumber("ijbc", "tar@1e-4", "IJB-C 1:1 TAR@FAR=1e-4", 95.6, MAIN_SETTING,
                note="arcface_torch today: 96.37 (r100), 95.97 (r50)"),
    PaperNumber("lfw", "acc", "LFW accuracy", 99.53, "casia-r50-arcface"),
    PaperNumber("cfp_fp", "acc", "CFP-FP accuracy", 95.56, "casia-r50-arcface"),
    PaperNumber("agedb_30", "acc", "AgeDB-30 accuracy", 95.15, "casia-r50-arcface"),
)


def numbers_for(setting: str = MAIN_SETTING) -> list[PaperNumber]:
    return [n for n in PAPER_NUMBERS if n.setting == setting]
