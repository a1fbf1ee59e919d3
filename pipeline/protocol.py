"""The paper's evaluation protocol: several training runs (one per seed and task), each evaluated at its
last few checkpoints over the budget grid; per seed the checkpoints are averaged, across seeds the
mean and standard deviation are reported, per task and for the mean over the tasks.

`summarise` turns the per-evaluation rows (scaling.CSV_COLUMNS plus the run, its training seed and the
checkpoint's step) into the summary rows of paper_summary.csv; `format_markdown` and `plot_summary`
draw paper_table.md and paper_success_vs_k.png from them; pipeline/scaling.py's `run_evaluation` runs
the evaluations. A seed's success on a task is the mean of its checkpoints' success rates (the paper's
average over the last three evaluations), with a 95% Wilson interval over their pooled episodes; its
"mean" is the mean over the tasks (only for a seed evaluated on every task of the table). Across seeds:
mean and sample standard deviation (ddof = 1) of the seeds' values.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data import files
from pipeline import scaling

ROW_COLUMNS = ("run", "train_seed", "checkpoint_step") + tuple(scaling.CSV_COLUMNS)  # protocol_rows.csv

SUMMARY_COLUMNS = (
    "scope",             # "seed": one training seed, its checkpoints averaged; "seeds": mean +- std across seeds
    "train_seed",        # the run's AgentConfig.seed (scope "seed"); empty across seeds
    "runs",              # the run directories behind the row (";"-joined)
    "task",              # OGBench task id, or "mean" (the mean over the tasks of the table)
    "policy",            # as scaling.CSV_COLUMNS: fixed, adaptive, adaptive-same_level
    "k",
    "N",
    "threshold",
    "seeds",             # training seeds in the row
    "checkpoints",       # checkpoints averaged per seed
    "checkpoint_steps",  # scope "seed": their gradient steps (";"-joined)
    "episodes",          # episodes pooled over checkpoints, tasks ("mean") and seeds ("seeds")
    "successes",
    "success_rate",      # "seed": mean over checkpoints (and tasks); "seeds": mean over the seeds' values
    "success_ci_low",    # "seed": 95% Wilson interval of the pooled episodes; empty across seeds
    "success_ci_high",
    "success_std",       # "seeds": sample standard deviation (ddof = 1) across seeds; empty for one seed
)


def last_checkpoints(workdir, count: int) -> list[str]:
    """The paths of the last `count` checkpoints of a run directory, oldest first; ValueError naming
    the directory and what it has when it has fewer."""
    import tensorflow as tf

    from models.checkpoints import CHECKPOINT_DIR

    if count < 1:
        raise ValueError(f"--last_checkpoints={count}: evaluate at least one checkpoint")
    directory = Path(workdir) / CHECKPOINT_DIR
    state = tf.train.get_checkpoint_state(str(directory))
    paths = list(state.all_model_checkpoint_paths) if state is not None else []
    if len(paths) < count:
        have = ", ".join(Path(p).name for p in paths) or "none"
        raise ValueError(f"{directory} has {len(paths)} checkpoint(s) ({have}); --last_checkpoints={count} needs "
                         f"{count}: pass --last_checkpoints={max(len(paths), 1)} or train longer")
    return paths[-count:]


def budget_key(row) -> tuple:
    """(policy, k, N, threshold) of a row, whether its values are numbers or CSV strings."""
    threshold = row.get("threshold", "")
    threshold = "" if threshold in ("", None) else f"{float(threshold):g}"
    return (str(row["policy"]), int(row["k"]), int(row["N"]), threshold)


def budget_label(key: tuple) -> str:
    policy, k, n, threshold = key
    if policy == "fixed":
        return f"k={k}" + (f", N={n}" if n > 1 else "")
    rule = f" ({policy[len('adaptive-'):].replace('_', ' ')})" if policy != "adaptive" else ""
    return f"adaptive k<={k}, thr={threshold}{rule}"


def _task(value):
    return int(value) if str(value).isdigit() else str(value)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """SUMMARY_COLUMNS rows from per-evaluation rows (ROW_COLUMNS; pooled task="all" rows are ignored).

    Per budget, in the order budgets first appear: for each training seed its per-task rows and its
    "mean" row, then the across-seed rows (scope "seeds") per task and for "mean".
    ValueError when two run directories give the same training seed on the same task.
    """
    rows = [r for r in rows if str(r["task"]) != "all"]
    groups: dict = {}
    budgets: list = []
    for r in rows:
        key = budget_key(r)
        if key not in budgets:
            budgets.append(key)
        groups.setdefault((key, _task(r["task"]), str(r["train_seed"])), []).append(r)
    for (key, task, seed), group in groups.items():
        runs = sorted({str(r["run"]) for r in group})
        if len(runs) > 1:
            raise ValueError(f"runs {runs} all have training seed {seed!r} on task {task}: the protocol averages "
                             "over seeds, so pass one run directory per seed and task")
    tasks = sorted({task for (_, task, _) in groups}, key=str)
    summary = []
    for key in budgets:
        seeds = sorted({seed for (k, _, seed) in groups if k == key}, key=lambda s: (len(s), s))
        per_seed: dict = {}  # (task or "mean", seed) -> the seed's row
        for seed in seeds:
            for task in tasks:
                if (key, task, seed) in groups:
                    per_seed[task, seed] = _seed_row(key, task, seed, groups[key, task, seed])
            if len(tasks) > 1 and all((task, seed) in per_seed for task in tasks):
                per_seed["mean", seed] = _seed_mean_row([per_seed[task, seed] for task in tasks])
        columns = tasks + (["mean"] if len(tasks) > 1 else [])
        for seed in seeds:
            summary += [per_seed[task, seed] for task in columns if (task, seed) in per_seed]
        for task in columns:
            seed_rows = [per_seed[task, seed] for seed in seeds if (task, seed) in per_seed]
            if seed_rows:
                summary.append(_across_seeds_row(key, task, seed_rows))
    return summary


def _base(key, task, scope, seed, runs) -> dict:
    policy, k, n, threshold = key
    return dict(scope=scope, train_seed=seed, runs=";".join(sorted(set(runs))), task=task, policy=policy, k=k, N=n,
                threshold=threshold)


def _seed_row(key, task, seed, group) -> dict:
    """One seed on one task: the mean of its checkpoints' success rates, Wilson over their episodes."""
    episodes = sum(int(r["episodes"]) for r in group)
    successes = sum(int(r["successes"]) for r in group)
    low, high = scaling.wilson_interval(successes, episodes)
    steps = sorted({str(r["checkpoint_step"]) for r in group}, key=lambda s: (len(s), s))  # "" for an export
    return dict(_base(key, task, "seed", seed, [r["run"] for r in group]), seeds=1, checkpoints=len(group),
                checkpoint_steps=";".join(steps), episodes=episodes, successes=successes,
                success_rate=float(np.mean([int(r["successes"]) / int(r["episodes"]) for r in group])),
                success_ci_low=low, success_ci_high=high, success_std="")


def _seed_mean_row(task_rows) -> dict:
    """One seed, mean over the tasks (Wilson over every episode of the seed)."""
    first = task_rows[0]
    episodes = sum(r["episodes"] for r in task_rows)
    successes = sum(r["successes"] for r in task_rows)
    low, high = scaling.wilson_interval(successes, episodes)
    return dict(first, task="mean", runs=";".join(sorted({run for r in task_rows for run in r["runs"].split(";")})),
                checkpoint_steps="", episodes=episodes, successes=successes,
                success_rate=float(np.mean([r["success_rate"] for r in task_rows])),
                success_ci_low=low, success_ci_high=high)


def _across_seeds_row(key, task, seed_rows) -> dict:
    rates = np.array([r["success_rate"] for r in seed_rows], float)
    runs = [run for r in seed_rows for run in r["runs"].split(";")]
    return dict(_base(key, task, "seeds", "", runs), seeds=len(seed_rows),
                checkpoints=max(r["checkpoints"] for r in seed_rows), checkpoint_steps="",
                episodes=sum(r["episodes"] for r in seed_rows), successes=sum(r["successes"] for r in seed_rows),
                success_rate=float(rates.mean()), success_ci_low="", success_ci_high="",
                success_std=float(rates.std(ddof=1)) if len(rates) > 1 else "")


def _float(value) -> float:
    return math.nan if value in ("", None) else float(value)


def table_cells(summary: Sequence[dict]) -> tuple[list, list, dict]:
    """(budget keys, task columns, {(budget, task): cell text}) of the markdown table: across seeds
    "mean ± std" in %, for one seed "x % [lo, hi]" (its 95% Wilson interval)."""
    budgets, columns, cells = [], [], {}
    seed_rows = {}
    for r in summary:
        key, task = budget_key(r), _task(r["task"])
        if key not in budgets:
            budgets.append(key)
        if task not in columns:
            columns.append(task)
        if r["scope"] == "seed":
            seed_rows[key, task] = r
    for r in summary:
        if r["scope"] != "seeds":
            continue
        key, task = budget_key(r), _task(r["task"])
        if int(r["seeds"]) > 1:
            cells[key, task] = f"{100 * _float(r['success_rate']):.1f} ± {100 * _float(r['success_std']):.1f}"
        else:
            s = seed_rows[key, task]
            cells[key, task] = (f"{100 * _float(s['success_rate']):.1f} % [{100 * _float(s['success_ci_low']):.1f}, "
                                f"{100 * _float(s['success_ci_high']):.1f}]")
    columns = sorted([c for c in columns if c != "mean"], key=str) + (["mean"] if "mean" in columns else [])
    return budgets, columns, cells


def format_markdown(summary: Sequence[dict], title: str, notes: str = "") -> str:
    """paper_table.md: rows = budgets, columns = tasks and their mean."""
    budgets, columns, cells = table_cells(summary)
    header = ["budget"] + [f"task {c}" if c != "mean" else "mean" for c in columns]
    lines = [f"## {title}", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in budgets:
        lines.append("| " + " | ".join([budget_label(key)] + [cells.get((key, c), "–") for c in columns]) + " |")
    return "\n".join(lines) + "\n"


def describe(summary: Sequence[dict], rows: Sequence[dict]) -> str:
    """The sentence under the table's title: seeds, checkpoints, episodes, what a cell is."""
    seeds = sorted({str(r["train_seed"]) for r in rows}, key=lambda s: (len(s), s))
    checkpoints = max((int(r["checkpoints"]) for r in summary if r["scope"] == "seed"), default=1)
    episodes = sorted({int(r["episodes"]) for r in rows if str(r["task"]) != "all"})
    eval_seeds = sorted({str(r["seed"]) for r in rows})
    cell_seeds = {int(r["seeds"]) for r in summary if r["scope"] == "seeds"}
    what = []
    if any(n > 1 for n in cell_seeds):
        what.append("mean ± standard deviation across seeds of each seed's success (the mean over its checkpoints)")
    if 1 in cell_seeds:
        what.append("x % [95% Wilson interval] for a cell with one seed (its checkpoints' episodes pooled)")
    mean = " \"mean\": the mean over the tasks." if any(str(r["task"]) == "mean" for r in summary) else ""
    return (f"{len(seeds)} training seed(s) ({', '.join(seeds)}); the last {checkpoints} checkpoint(s) of each run; "
            f"{'/'.join(str(e) for e in episodes)} episodes per task, budget and checkpoint; evaluation seed "
            f"{', '.join(eval_seeds)}. Cells in %: {'; '.join(what)}.{mean}")


def plot_summary(summary: Sequence[dict], output_dir, title: str = "") -> Path:
    """paper_success_vs_k.png: the mean over tasks (or the one task) against k, one line per N;
    error bars: the standard deviation across seeds, or the Wilson interval for one seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    across = [r for r in summary if r["scope"] == "seeds" and r["policy"] == "fixed"]
    shown = "mean" if any(str(r["task"]) == "mean" for r in across) else str(across[0]["task"]) if across else ""
    across = [r for r in across if str(r["task"]) == shown]
    seed_rows = {(budget_key(r), str(r["task"])): r for r in summary if r["scope"] == "seed"}
    fig, ax = plt.subplots(figsize=(6, 4))
    values = sorted({int(r["N"]) for r in across})
    for i, n in enumerate(values):
        group = sorted((r for r in across if int(r["N"]) == n), key=lambda r: int(r["k"]))
        x = np.array([int(r["k"]) for r in group], float) * 2 ** (0.06 * (i - (len(values) - 1) / 2))
        y = np.array([_float(r["success_rate"]) for r in group])
        if all(int(r["seeds"]) > 1 for r in group):
            err = np.array([_float(r["success_std"]) for r in group])
            yerr, label = [err, err], f"N={n} (± std over seeds)"
        else:
            s = [seed_rows[budget_key(r), shown] for r in group]
            yerr = [y - np.array([_float(r["success_ci_low"]) for r in s]),
                    np.array([_float(r["success_ci_high"]) for r in s]) - y]
            label = f"N={n} (95% Wilson)"
        ax.errorbar(x, y, yerr=yerr, capsize=3, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Euler steps k")
    ax.set_ylabel("success rate" + (" (mean over tasks)" if shown == "mean" else f" (task {shown})"))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    return files.save_figure(fig, Path(output_dir) / "paper_success_vs_k.png")


_COUNT_FIELDS = ("k", "N", "episodes", "successes")


def read_rows(paths: Sequence) -> list[dict]:
    """The rows of several protocol_rows.csv files (evaluations run apart: tasks as their training ends,
    or on several machines), checked before they are merged into one table: ValueError naming the file,
    line, field and value for a missing file or column, a count that is not a whole number (k, N and
    episodes at least 1), more successes than episodes, or one evaluation (run, checkpoint, task,
    budget) present twice."""
    rows, seen = [], {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file; pass the protocol_rows.csv that evaluate.py --protocol=paper "
                             "wrote in its --output")
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            file_rows = list(reader)
        missing = [c for c in ROW_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a protocol_rows.csv, it lacks the column(s) {', '.join(missing)}; pass "
                             "the file evaluate.py --protocol=paper wrote")
        for line, r in enumerate(file_rows, start=2):
            for field in _COUNT_FIELDS:
                least = 0 if field == "successes" else 1
                # ASCII digits: str.isdigit() also passes "²", which int() refuses without naming the line
                if not re.fullmatch(r"[0-9]+", str(r[field])) or int(r[field]) < least:
                    raise ValueError(f"{path}, line {line}: {field}={r[field]!r} is not a whole number >= {least}")
            if int(r["successes"]) > int(r["episodes"]):
                raise ValueError(f"{path}, line {line}: successes={r['successes']} exceeds episodes={r['episodes']}")
            if str(r["task"]) == "all":
                continue
            key = (r["run"], str(r["checkpoint_step"]), str(r["task"])) + budget_key(r)
            if key in seen:
                raise ValueError(f"{path}, line {line}: run {r['run']!r}, checkpoint {r['checkpoint_step']!r}, "
                                 f"task {r['task']}, {budget_label(budget_key(r))} is also in {seen[key]}; "
                                 "merge each evaluation once")
            seen[key] = f"{path}, line {line}"
            rows.append(r)
    return rows


def write_outputs(rows: Sequence[dict], output_dir, env: str) -> dict:
    """protocol_rows.csv (every evaluation), paper_summary.csv, paper_table.md and
    paper_success_vs_k.png in `output_dir`; returns their paths and the table's text."""
    output_dir = Path(output_dir)
    summary = summarise(rows)
    rows_csv = scaling.write_csv(rows, output_dir / "protocol_rows.csv", ROW_COLUMNS)
    summary_csv = scaling.write_csv(summary, output_dir / "paper_summary.csv", SUMMARY_COLUMNS)
    table = format_markdown(summary, f"{env}: success rate (%) per task and inference budget", describe(summary, rows))
    table_path = files.write_text(output_dir / "paper_table.md", table)
    plot = plot_summary(summary, output_dir, title=env)
    return dict(protocol_rows=str(rows_csv), summary_csv=str(summary_csv), paper_table=str(table_path),
                paper_plot=str(plot), table_markdown=table, summary=summary)
