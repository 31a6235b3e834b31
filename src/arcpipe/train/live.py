"""Training metrics and plots through DVCLive (rank 0): `dvc metrics show`, `dvc plots show` and
`dvc exp show` read <live_dir>/metrics.json and <live_dir>/plots/metrics/**.tsv.

Only numbers that the same inputs reproduce are logged here (loss, learning rate, verification
accuracy, by step); samples per second and the ETA go to the stage's log. The whole history is in
every checkpoint, so a resumed run first writes the history up to its checkpoint again: the files
are the same as an uninterrupted run's, whatever DVC removed before the stage ran again.
"""
from __future__ import annotations

import shutil
from pathlib import Path


class LiveLog:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._live = None

    def start(self, history) -> None:
        from dvclive import Live

        # what DVCLive writes here, not the folder: another stage's live folder may lie inside it
        # (train_bootstrap's dvclive/train_bootstrap in train's dvclive)
        shutil.rmtree(self.folder / "plots", ignore_errors=True)
        (self.folder / "metrics.json").unlink(missing_ok=True)
        self._live = Live(dir=str(self.folder), resume=False, save_dvc_exp=False, dvcyaml=False, report=None)
        for step, metrics in history:
            self._write(step, metrics)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._live is not None:
            self._write(step, metrics)

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        self._live.step = int(step)
        for name, value in metrics.items():
            self._live.log_metric(name, float(value))
        self._live.make_summary()

    def finish(self) -> None:
        if self._live is not None:
            self._live.make_summary()
            self._live = None
