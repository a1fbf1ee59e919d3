"""The files a training run writes besides checkpoints: eval.csv, learning_curve.png, TensorBoard HParams.

    RUN/eval.csv             one row per evaluation step and Euler-step budget k (column steps_k)
    RUN/learning_curve.png   success rate against gradient steps, one line per k (OGBench); on a
                             dataset's own rewards, the mean return (band: +- std over episodes)
                             with the dataset's mean and best episode returns as reference lines
    RUN/tensorboard/         scalars (pipeline/callbacks.py) and the run's hyper-parameters
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from data import files


class EvalLog:
    """Evaluation results as a CSV (one row per step and budget) and a learning-curve PNG."""

    FIELDS = ("step", "task", "steps_k", "num_samples", "success_rate", "mean_return", "episodes", "seconds")
    # A run on a dataset's own rewards: no task or success; return std over the episodes and
    # 100 (R - ref_min) / (ref_max - ref_min) (empty without reference scores).
    OWN_REWARD_FIELDS = ("step", "steps_k", "num_samples", "mean_return", "return_std", "normalized_score",
                         "episodes", "seconds")

    def __init__(self, workdir):
        self.csv_path = Path(workdir) / "eval.csv"
        self.png_path = Path(workdir) / "learning_curve.png"

    def append(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        own = "success_rate" not in rows[0]
        columns = self.OWN_REWARD_FIELDS if own else self.FIELDS
        if own:
            rows = [dict(r, normalized_score="" if not math.isfinite(r["normalized_score"]) else r["normalized_score"])
                    for r in rows]
        files.append_csv_rows(self.csv_path, columns, rows)

    def rows(self) -> list[dict]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def plot(self, title: str, reference=None) -> None:
        """learning_curve.png; `reference` (pipeline.scores.ReturnReference) for a run on own rewards."""
        rows = self.rows()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        if "success_rate" not in rows[0]:
            return self._plot_returns(fig, ax, rows, title, reference)
        for k in sorted({int(r["steps_k"]) for r in rows}):
            pts = sorted((int(r["step"]), 100 * float(r["success_rate"])) for r in rows if int(r["steps_k"]) == k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"k={k} Euler steps")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("success rate (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        files.save_figure(fig, self.png_path, dpi=120)

    def _plot_returns(self, fig, ax, rows, title, reference) -> None:
        for k in sorted({int(r["steps_k"]) for r in rows}):
            pts = sorted((int(r["step"]), float(r["mean_return"]), float(r["return_std"]))
                         for r in rows if int(r["steps_k"]) == k)
            steps, mean, std = (np.array(column) for column in zip(*pts))
            line, = ax.plot(steps, mean, marker="o", label=f"k={k} Euler steps")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        if reference is not None:
            for value, label, style in ((reference.dataset_mean, "dataset mean return", "--"),
                                        (reference.dataset_best, "dataset best episode", ":")):
                if value is not None:
                    ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"{label} ({value:.1f})")
            if reference.has_scores:
                low, high = reference.ref_min_score, reference.ref_max_score
                axis = ax.secondary_yaxis("right", functions=(lambda r: 100 * (r - low) / (high - low),
                                                              lambda s: low + s * (high - low) / 100))
                axis.set_ylabel("normalised score")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("undiscounted return (band: +- std over episodes)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        files.save_figure(fig, self.png_path, dpi=120)


def drop_rows_after(csv_path, step: int) -> int:
    """Rewrites `csv_path` (atomically) without its rows after gradient step `step` and without a
    row a kill cut short; returns how many rows it dropped (0, and no rewrite, when none)."""
    path = Path(csv_path)
    if not path.exists():
        return 0
    text = path.read_text()
    lines = text.splitlines()
    if not text.endswith("\n") and lines:
        lines = lines[:-1]  # an append cut short: its last value may be cut too
    rows = list(csv.DictReader(lines))
    columns = next(csv.reader(lines[:1]), None)
    if not columns:
        return 0
    kept = [r for r in rows if _whole(r) and int(float(r["step"])) <= step]
    dropped = len(text.splitlines()) - 1 - len(kept)
    if dropped:
        files.write_csv(path, kept, columns)
    return dropped


def _whole(row: dict) -> bool:
    """Every column there (no more, no fewer) and a numeric step."""
    if None in row or None in row.values():
        return False
    try:
        return math.isfinite(float(row.get("step", "")))
    except ValueError:
        return False


def mark_start(writer, step: int) -> None:
    """Marks in TensorBoard that the run (re)starts after gradient step `step`: a SessionLog START
    event at step + 1. TensorBoard takes a run's first START as its beginning and, on each later one,
    drops the points at and after its step written before (tf.summary has no purge; TF1 supervisors
    marked restarts this way), so a step a resumed run logs again is shown once."""
    import time

    import tensorflow as tf
    from tensorflow.python.ops import summary_ops_v2  # import_event: the public writer has no raw-event call

    event = tf.compat.v1.Event(wall_time=time.time(), step=step + 1,
                               session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START))
    with writer.as_default():
        summary_ops_v2.import_event(tf.constant(event.SerializeToString()))
    writer.flush()


def hparam_values(config) -> dict:
    """A RunConfig's fields as TensorBoard HParams values (tuples as JSON text)."""
    values = {}
    for part in (config.agent, config.data, config.schedule):
        for key, value in dataclasses.asdict(part).items():
            values[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def write_hparams(writer, config, trial_id: str) -> None:
    """The run's hyper-parameters for TensorBoard's HParams dashboard, through summary `writer`."""
    from tensorboard.plugins.hparams import api as hp

    with writer.as_default():
        hp.hparams(hparam_values(config), trial_id=trial_id)
    writer.flush()
