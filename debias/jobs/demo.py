"""``debias demo``: the whole pipeline on synthetic faces, with nothing to download.

The task is a glasses classifier with a shortcut: in the training faces skin tone agrees with the
answer 95% of the time (dark skin with glasses, light without), and skin is far easier to see
than thin glasses. The held-out faces have every (glasses, skin tone) cell alike. The demo trains
the plain classifier, which takes the shortcut, and the DB-VAE with the project's default
weighting, which finds the faces that break it without reading skin tone; audits both on the
held-out faces; scores a folder of incoming images mixing faces with non-faces, noise and flat
images, calibrated on the other held-out faces; and writes the report. Every step writes
into ``out`` and can be rerun alone with the commands the README shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from debias import errors, runfolder
from debias.config import TrainConfig
from debias.data import write_shortcut_synthetic
from debias.data.synth import draw_non_face
from debias.jobs.audit import AuditConfig, AuditReport, write_audit
from debias.jobs.outliers import OutlierConfig, write_outliers
from debias.jobs.repair import RepairConfig, write_repair
from debias.jobs.report import ReportConfig, write_report
from debias.progress import Listener, SilentListener
from debias.training import resume, train

INCOMING_FACES = 100  # held-out faces screened among the outliers; the rest calibrate


def _incoming(test: Path, faces: list[str], folder: Path, seed: int) -> Path:
    """Make a folder of images to screen: test ``faces``, non-faces, noise and flat images."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for rel in faces:
        name = f"face-{Path(rel).name}"
        Image.open(test / rel).save(folder / name)
        rows.append((name, "inlier"))
    rng = np.random.default_rng(seed)
    for i in range(100):
        draw_non_face(rng, 64).save(folder / f"not_face-{i}.png")
        rows.append((f"not_face-{i}.png", "not a face"))
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"noise-{i}.png"
        )
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        Image.fromarray(np.broadcast_to(colour, (64, 64, 3)).copy()).save(folder / f"flat-{i}.png")
        rows += [(f"noise-{i}.png", "uniform noise"), (f"flat-{i}.png", "constant")]
    eval_csv = folder.parent / "incoming-labels.csv"
    pd.DataFrame([(f"{folder.name}/{n}", t) for n, t in rows], columns=["path", "type"]).to_csv(
        eval_csv, index=False
    )
    return eval_csv


def _calibration(test: Path, faces: list[str], csv: Path) -> Path:
    """List the held-out faces not screened: drawn like the incoming faces, unlike training's.

    The run's validation faces share the training faces' shortcut; the incoming faces do not,
    so a threshold calibrated on the validation faces flagged 20% of them for a 5% target.
    """
    paths = [f"{test.name}/{rel}" for rel in faces]
    pd.DataFrame({"path": paths}).to_csv(csv, index=False)
    return csv


REPAIR_FACES = 25  # labelled faces per glasses x skin tone cell: what a small audit set has


def _repair_labels(train: Path, seed: int) -> Path:
    """Write a labels CSV of REPAIR_FACES training faces per cell, beside the training CSV."""
    frame = pd.read_csv(train / "labels.csv", keep_default_na=False)
    shuffled = frame.sample(frac=1.0, random_state=seed)
    drawn = shuffled.groupby(["label", "skin_tone"]).head(REPAIR_FACES)
    path = train / "repair-labels.csv"
    drawn.to_csv(path, index=False)
    return path


def _worst_group(audit: AuditReport) -> float:
    """Return the lowest accuracy over the audit's finest groups (skin tone & glasses)."""
    return float(audit.result.wide()["accuracy"].min())


def write_demo(
    out: str | Path = "reports/demo",
    *,
    epochs: int = 10,
    device: str = "auto",
    seed: int = 0,
    listener: Listener | None = None,
    say=print,
) -> Path:
    """Run the whole pipeline on synthetic faces; return the report's path.

    Parameters
    ----------
    out : path-like
        Folder for everything the demo makes (data, runs, audit, outliers, report).
    epochs : int
        Training epochs of both models.
    device : str
        auto, cpu, cuda or mps.
    seed : int
        Seed of the data and the training.
    listener : Listener, optional
        Progress hooks.
    say : callable
        Where one-line step messages go.
    """
    step = _Demo(Path(out), epochs, device, seed, listener or SilentListener(), say)
    if step.out.exists() and not step.out.is_dir():
        raise errors.RunError(errors.OUT_IS_FILE.format(path=step.out))
    eval_csv, calibration_csv = step.draw_data()
    runs = step.train_both()
    runs["repaired"] = step.repair_plain(runs["baseline"])
    audits = step.audit_all(runs)
    outliers = step.screen(runs["dbvae"], eval_csv, calibration_csv)
    step.say("7/7 Writing the report")
    config = ReportConfig(
        model=str(runs["dbvae"]),
        baseline=str(runs["baseline"]),
        audit=str(audits["dbvae"].out),
        baseline_audit=str(audits["baseline"].out),
        outliers=str(outliers.csv),
        name="demo",
        out=str(step.out / "report"),
        overwrite=True,  # the demo's own folder: a second demo replaces its report
    )
    return write_report(config, listener=step.listener)


@dataclass
class _Demo:
    """The demo's settings, shared by its steps."""

    out: Path
    epochs: int
    device: str
    seed: int
    listener: Listener
    say: Any

    @property
    def data(self) -> Path:
        return self.out / "data"

    def draw_data(self) -> tuple[Path, Path]:
        """Draw the training and held-out faces once; return the incoming and calibration CSVs."""
        data, seed = self.data, self.seed
        if not (data / "train" / "labels.csv").is_file():
            self.say(
                "1/7 Drawing synthetic faces for a glasses classifier: 1,200 for training, where "
                "skin tone gives the answer away for 95%, and 600 held out, where it does not"
            )
            write_shortcut_synthetic(data / "train", n_faces=1200, shortcut=0.95, seed=seed)
            write_shortcut_synthetic(data / "test", n_faces=600, shortcut=0.5, seed=seed + 1)
        held_out = pd.read_csv(data / "test" / "labels.csv", keep_default_na=False)["path"]
        held_out = held_out.tolist()
        eval_csv = _incoming(data / "test", held_out[:INCOMING_FACES], data / "incoming", seed)
        calibration = _calibration(
            data / "test", held_out[INCOMING_FACES:], data / "calibration.csv"
        )
        return eval_csv, calibration

    def train_both(self) -> dict[str, Path]:
        """Train (or finish, or reuse) the plain classifier and the DB-VAE."""
        runs = {}
        for step, (name, baseline) in enumerate((("baseline", True), ("dbvae", False)), start=2):
            run = runs[name] = self.out / "runs" / name
            if (run / runfolder.SAMPLES).is_file():  # written last: the run finished
                continue
            self.say(f"{step}/7 Training the {'plain classifier' if baseline else 'DB-VAE'}")
            if (run / runfolder.CONFIG).is_file():  # an earlier demo was stopped: finish it
                resume(run, epochs=self.epochs, device=self.device, listener=self.listener)
                continue
            config = TrainConfig(
                data=str(self.data / "train"),
                out=str(run),
                baseline=baseline,
                epochs=self.epochs,
                device=self.device,
                seed=self.seed,
            )
            train(config, listener=self.listener)
        return runs

    def repair_plain(self, plain: Path) -> Path:
        """Repair the plain classifier with REPAIR_FACES labelled faces per cell."""
        self.say(
            f"4/7 Repairing the plain classifier with {REPAIR_FACES} labelled faces per glasses "
            "x skin tone cell (its last layer refit; kept only if it helps)"
        )
        repaired = self.out / "runs" / "repaired"
        config = RepairConfig(
            model=str(plain),
            labels=str(_repair_labels(self.data / "train", self.seed)),
            groups=["skin_tone"],
            out=str(repaired),
            overwrite=True,
            seed=self.seed,
        )
        write_repair(config, listener=self.listener)
        return repaired

    def audit_all(self, runs: dict[str, Path]) -> dict[str, AuditReport]:
        """Audit the three models on the held-out faces; say the worst group of each."""
        self.say("5/7 Auditing the three models on the held-out faces")
        folders = {"dbvae": "audit", "baseline": "baseline-audit", "repaired": "repaired-audit"}
        audits = {
            name: write_audit(
                AuditConfig(
                    model=str(runs[name]),
                    data=str(self.data / "test"),
                    device=self.device,
                    out=str(self.out / folder),
                    overwrite=True,
                ),
                listener=self.listener,
            )
            for name, folder in folders.items()
        }
        worst = {name: _worst_group(audit) for name, audit in audits.items()}
        self.say(
            f"   Worst group on held-out faces: plain {worst['baseline']:.3f} -> DB-VAE (no group "
            f"labels) {worst['dbvae']:.3f} -> plain + repair ({REPAIR_FACES} labels per cell) "
            f"{worst['repaired']:.3f}"
        )
        return audits

    def screen(self, run: Path, eval_csv: Path, calibration_csv: Path) -> Any:
        """Screen the incoming images with the DB-VAE's detector; return the outliers report."""
        self.say(
            "6/7 Screening incoming images for outliers, calibrated on the other held-out faces "
            "(drawn like the incoming ones)"
        )
        config = OutlierConfig(
            model=str(run),
            data=str(self.data / "incoming"),
            calibration=str(calibration_csv),
            eval_labels=str(eval_csv),
            device=self.device,
            out=str(self.out / "outliers" / "outliers.csv"),
            overwrite=True,
        )
        return write_outliers(config, listener=self.listener)
