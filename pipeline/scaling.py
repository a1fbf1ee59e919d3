"""Inference-time scaling sweeps: the budget grid (Euler steps k x candidates N, plus adaptive rows),
its CSV table with 95% Wilson intervals, the plots, and `run_evaluation`, the one call behind
pipeline/evaluate.py (the grid and the critic diagnostics of a checkpoint or an export).

The runner is independent of where the policy comes from: `run_grid` takes a `make_policy(cell)`
callable, so a checkpoint (any cell, through `agent.act`) and a SavedModel (the cells it has
signatures for) share it, and tests drive it with a tiny agent and a toy environment.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from data import envs as env_families
from data import files
from pipeline import policies, rollouts

DEFAULT_EULER_STEPS = (1, 2, 4, 8, 16, 32)
DEFAULT_CANDIDATES = (1, 2, 4, 8, 16)
Z_95 = 1.959963984540054  # standard normal quantile at 0.975

CSV_COLUMNS = (
    "task",                     # OGBench task id, "all" (episodes pooled over the tasks), empty on own rewards
    "policy",                   # "fixed" (k steps, best of N), "adaptive" or "adaptive-same_level" (the rule's compare)
    "k",                        # Euler steps (fixed), or the step cap (adaptive)
    "N",                        # candidates per observation (best of N ranked by the critic)
    "threshold",                # adaptive: relative Q-gain threshold; empty for fixed budgets
    "episodes",
    "successes",
    "success_rate",
    "success_ci_low",           # 95% Wilson score interval
    "success_ci_high",
    "mean_return",
    "mean_steps",               # Euler steps of the action taken (k for fixed; mean for adaptive)
    "actor_calls_per_action",   # velocity-network evaluations per action: k * N (adaptive: mean spent)
    "critic_calls_per_action",  # Q evaluations per action: N if N > 1 (adaptive: mean spent)
    "compute_per_action",       # actor + critic calls: the x axis of the compute plot
    "policy_ms_per_action",     # policy wall time per action, amortised over the batch of envs
    "policy_ms_per_call",       # policy wall time per batched call (both: first call, i.e. tracing, excluded)
    "wall_seconds",             # the cell's total time, environment included
    "seed",
    "return_std",               # std of the undiscounted return over the episodes
    "normalized_score",         # 100 (mean_return - ref_min) / (ref_max - ref_min); empty without reference scores
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One budget of the grid: k Euler steps, best of N; or adaptive with a cap, a threshold and the
    rule's critic inputs (`compare`, models.adaptive.COMPARE_RULES)."""

    k: int
    N: int = 1
    adaptive: bool = False
    threshold: float = 0.0
    compare: str = "across_levels"

    @property
    def label(self) -> str:
        if self.adaptive:
            rule = "" if self.compare == "across_levels" else f", {self.compare}"
            return f"adaptive(k<={self.k}, thr={self.threshold:g}{rule})"
        return f"k={self.k} N={self.N}"

    @property
    def policy(self) -> str:
        """The CSV's policy column: "fixed", "adaptive" (today's rule) or "adaptive-<compare>"."""
        if not self.adaptive:
            return "fixed"
        return "adaptive" if self.compare == "across_levels" else f"adaptive-{self.compare}"

    @property
    def actor_calls(self) -> int:
        return self.k * self.N

    @property
    def critic_calls(self) -> int:
        return self.N if self.N > 1 else 0


def budget_grid(euler_steps: Iterable[int] = DEFAULT_EULER_STEPS, candidates: Iterable[int] = DEFAULT_CANDIDATES,
                adaptive_thresholds: Iterable[float] = (), adaptive_max_euler_steps: int = 8,
                adaptive_compare: Iterable[str] = ("across_levels",)) -> list[Cell]:
    """Every (k, N) pair, then one adaptive cell per threshold and rule."""
    from models.adaptive import check_compare

    euler_steps, candidates = [int(k) for k in euler_steps], [int(n) for n in candidates]
    for name, values in (("euler_steps", euler_steps), ("candidates", candidates)):
        if not values or any(v < 1 for v in values):
            raise ValueError(f"--{name}={values}: give one or more positive integers")
    rules = [check_compare(c) for c in adaptive_compare]
    cells = [Cell(k, n) for k in euler_steps for n in candidates]
    cells += [Cell(int(adaptive_max_euler_steps), 1, adaptive=True, threshold=float(t), compare=rule)
              for t in adaptive_thresholds for rule in rules]
    return cells


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (successes out of trials).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes,
    which matter here: success rates of 0% and 100% are common.
    """
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # The interval always contains p; the clamps only absorb rounding (at p = 0 or 1 the exact
    # bound is p itself).
    return (min(p, max(0.0, centre - half_width)), max(p, min(1.0, centre + half_width)))


def cell_row(task, cell: Cell, result: dict, seed: int, cost: Optional[dict] = None, reference=None) -> dict:
    """One CSV row from `rollouts.evaluate_policy`'s result. `cost` (adaptive cells) overrides
    the per-action step and call counts with the means the policy measured; `reference`
    (pipeline.scores.ReturnReference) gives the normalised score."""
    episodes = int(result["episodes"])
    successes = float(np.sum(result["successes"]))
    low, high = wilson_interval(successes, episodes)
    cost = cost or dict(mean_steps=cell.k, actor_calls=cell.actor_calls, critic_calls=cell.critic_calls)
    return dict(
        task=task,
        policy=cell.policy,
        k=cell.k,
        N=cell.N,
        threshold=cell.threshold if cell.adaptive else "",
        episodes=episodes,
        successes=int(round(successes)),
        success_rate=successes / episodes,
        success_ci_low=low,
        success_ci_high=high,
        mean_return=float(np.mean(result["returns"])),
        mean_steps=float(cost["mean_steps"]),
        actor_calls_per_action=float(cost["actor_calls"]),
        critic_calls_per_action=float(cost["critic_calls"]),
        compute_per_action=float(cost["actor_calls"]) + float(cost["critic_calls"]),
        policy_ms_per_action=float(result["policy_ms_per_action"]),
        policy_ms_per_call=float(result["policy_ms_per_call"]),
        wall_seconds=float(result["wall_seconds"]),
        seed=seed,
        return_std=float(np.std(result["returns"])),
        normalized_score=(reference.normalized_score(np.mean(result["returns"]))
                          if reference is not None and reference.has_scores else ""),
    )


def pooled_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows with task="all": per cell, the episodes of every task pooled (= the mean over tasks when
    each task has the same number of episodes, as the paper reports)."""
    by_cell: dict = {}
    for row in rows:
        by_cell.setdefault((row["policy"], row["k"], row["N"], row["threshold"]), []).append(row)
    pooled = []
    for group in by_cell.values():
        episodes = sum(r["episodes"] for r in group)
        successes = sum(r["successes"] for r in group)
        low, high = wilson_interval(successes, episodes)
        weights = np.array([r["episodes"] for r in group], float) / episodes
        mean = lambda key: float(np.dot(weights, [float(r[key]) for r in group]))  # noqa: E731
        pooled.append(dict(
            group[0],
            task="all",
            episodes=episodes,
            successes=successes,
            success_rate=successes / episodes,
            success_ci_low=low,
            success_ci_high=high,
            mean_return=mean("mean_return"),
            # the pooled episodes' std: E[R^2] - E[R]^2 from each task's mean and std
            return_std=float(np.sqrt(max(np.dot(weights, [float(r["return_std"]) ** 2 + float(r["mean_return"]) ** 2
                                                          for r in group]) - mean("mean_return") ** 2, 0.0))),
            mean_steps=mean("mean_steps"),
            actor_calls_per_action=mean("actor_calls_per_action"),
            critic_calls_per_action=mean("critic_calls_per_action"),
            compute_per_action=mean("compute_per_action"),
            policy_ms_per_action=mean("policy_ms_per_action"),
            policy_ms_per_call=mean("policy_ms_per_call"),
            wall_seconds=sum(r["wall_seconds"] for r in group),
        ))
    return pooled


def run_grid(
    make_policy: Callable[[Cell], Callable],
    env,
    tasks: Sequence[int],
    cells: Sequence[Cell],
    episodes: int,
    seed: int,
    num_envs: Optional[int] = None,
    episode_length: Optional[int] = None,
    vectorization: str = "auto",
    show_progress: bool = True,
    reference=None,
) -> list[dict]:
    """Evaluate every cell on every task; one CSV row per (task, cell), plus pooled "all" rows
    when there is more than one task.

    Every cell uses the same evaluation seed, so all budgets face the same start states (common
    random numbers: differences between budgets are not differences between episodes).
    `make_policy` is called once per cell (its policy serves every task: one trace per budget).
    A policy may expose `cost()` -> dict(mean_steps, actor_calls, critic_calls) measured since
    its `reset_cost()` (the adaptive policy does); the runner resets it before each task.
    """
    (rows,) = run_grids([(make_policy, tasks)], env, cells, episodes, seed, num_envs=num_envs,
                        episode_length=episode_length, vectorization=vectorization, show_progress=show_progress,
                        reference=reference)
    if len(tasks) > 1:
        rows += pooled_rows(rows)
    return rows


def run_grids(
    units: Sequence[tuple],
    env,
    cells: Sequence[Cell],
    episodes: int,
    seed: int,
    num_envs: Optional[int] = None,
    episode_length: Optional[int] = None,
    vectorization: str = "auto",
    show_progress: bool = True,
    reference=None,
) -> list[list[dict]]:
    """`run_grid` for several policy sources at once (the checkpoints of several runs): units are
    (make_policy, tasks) pairs; returns each unit's rows, one per (task, cell), tasks in order,
    without pooled rows. The work runs task by task, so one vector env (its worker processes
    and compiled models) serves every unit evaluated on that task."""
    from tqdm import tqdm

    all_tasks = list(dict.fromkeys(_task(t) for _, tasks in units for t in tasks))  # first-seen order
    rows: list = [[] for _ in units]
    made: dict = {}
    total = sum(len(tasks) for _, tasks in units) * len(cells) * episodes
    with tqdm(total=total, unit="ep", disable=not show_progress, dynamic_ncols=True) as bar:
        for t_index, task in enumerate(all_tasks):
            for u_index, (make_policy, tasks) in enumerate(units):
                if task not in [_task(t) for t in tasks]:
                    continue
                for c_index, cell in enumerate(cells):
                    unit = f" source {u_index + 1}/{len(units)}" if len(units) > 1 else ""
                    where = f"task {task} ({t_index + 1}/{len(all_tasks)})" if task is not None else "own rewards"
                    bar.set_description(f"{where}{unit} {cell.label} "
                                        f"({c_index + 1}/{len(cells)})")
                    if (u_index, cell) not in made:
                        made[u_index, cell] = make_policy(cell)
                    row = evaluate_cell(made[u_index, cell], env, task, cell, episodes, seed, num_envs=num_envs,
                                        episode_length=episode_length, vectorization=vectorization,
                                        progress=bar.update, reference=reference)
                    rows[u_index].append(row)
                    bar.set_postfix(success=f"{row['success_rate']:.2f}", mean_return=f"{row['mean_return']:.1f}")
    return rows


def _task(task):
    """An OGBench task id as an int; None (a run on a dataset's own rewards) stays None."""
    return None if task is None or task == "" else int(task)


def evaluate_cell(policy, env, task, cell: Cell, episodes: int, seed: int, num_envs: Optional[int] = None,
                  episode_length: Optional[int] = None, vectorization: str = "auto", progress=None,
                  reference=None) -> dict:
    """One CSV row: `episodes` episodes of `policy` (cell's budget) on `task` (None on own rewards, the row's
    task then empty); `reference`: pipeline.scores.ReturnReference for the normalised score."""
    if hasattr(policy, "reset_cost"):
        policy.reset_cost()
    result = rollouts.evaluate_policy(
        policy, env, task, episodes, seed, num_envs=num_envs, episode_length=episode_length,
        vectorization=vectorization, progress=progress)
    cost = policy.cost() if hasattr(policy, "cost") else None
    return cell_row("" if task is None else task, cell, result, seed, cost, reference)


# --------------------------------------------------------------------------------------------------
# Outputs


def write_csv(rows: Sequence[dict], path, columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """Write rows to `path` whole (floats to 6 significant digits; a missing column is empty)."""
    return files.write_csv(path, [{c: _format(row.get(c, "")) for c in columns} for row in rows], columns)


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_scaling(rows: Sequence[dict], output_dir, title: str = "", metric: str = "success_rate") -> list[Path]:
    """success_vs_k.png, success_vs_N.png and success_vs_compute.png in `output_dir`; with
    metric="mean_return" (a run on a dataset's own rewards) return_vs_*.png of the mean return.

    Plots the pooled "all" rows when present (mean over tasks), else the single task's rows.
    Error bars are the 95% Wilson intervals (success) or 95% normal intervals of the mean return.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tasks = {str(r["task"]) for r in rows}
    shown_task = "all" if "all" in tasks else sorted(tasks)[0]
    shown = [r for r in rows if str(r["task"]) == shown_task]

    fixed = [r for r in shown if r["policy"] == "fixed"]
    adaptive = [r for r in shown if r["policy"].startswith("adaptive")]
    suffix = {"all": " (mean over tasks)", "": ""}.get(shown_task, f" (task {shown_task})")  # "": own rewards
    paths = []

    def finish(fig, ax, xlabel, name):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel(xlabel)
        if metric == "success_rate":
            ax.set_ylabel("success rate")
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_ylabel("mean undiscounted return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title((title + suffix).strip())
        fig.tight_layout()
        paths.append(files.save_figure(fig, output_dir / (name if metric == "success_rate"
                                                          else name.replace("success_", "return_"))))

    def errorbar(ax, group, x_key, label, dodge=0.0, **kwargs):
        # dodge: a small shift along the log axis so that overlapping lines stay visible
        group = sorted(group, key=lambda r: float(r[x_key]))
        x = [float(r[x_key]) * 2 ** dodge for r in group]
        if metric == "success_rate":
            y = np.array([float(r["success_rate"]) for r in group])
            low = y - np.array([float(r["success_ci_low"]) for r in group])
            high = np.array([float(r["success_ci_high"]) for r in group]) - y
        else:
            y = np.array([float(r["mean_return"]) for r in group])
            low = high = np.array([Z_95 * float(r["return_std"]) / math.sqrt(float(r["episodes"])) for r in group])
        ax.errorbar(x, y, yerr=[low, high], capsize=3, label=label, **kwargs)

    for x_key, line_key, xlabel, name in (("k", "N", "Euler steps k", "success_vs_k.png"),
                                          ("N", "k", "candidates N (best of N by Q)", "success_vs_N.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        values = sorted({int(r[line_key]) for r in fixed})
        for i, value in enumerate(values):
            group = [r for r in fixed if int(r[line_key]) == value]
            errorbar(ax, group, x_key, f"{line_key}={value}", dodge=0.06 * (i - (len(values) - 1) / 2), marker="o")
        finish(fig, ax, xlabel, name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({int(r["N"]) for r in fixed}):
        group = [r for r in fixed if int(r["N"]) == n]
        errorbar(ax, group, "compute_per_action", f"N={n} (k varies)", marker="o", linestyle=":")
    for r in adaptive:
        rule = r["policy"][len("adaptive-"):] + " " if r["policy"] != "adaptive" else ""
        errorbar(ax, [r], "compute_per_action", f"adaptive {rule}k<={r['k']} thr={float(r['threshold']):g} "
                 f"(mean k {float(r['mean_steps']):.2f})", marker="*", markersize=12, linestyle="none")
    finish(fig, ax, "network evaluations per action (actor + critic)", "success_vs_compute.png")
    return paths



def format_table(rows) -> str:
    """A short text table for the terminal: one line per row."""
    if rows and rows[0]["task"] == "":  # a dataset's own rewards: return, its std, normalised score
        lines = [f"{'policy':>8} {'k':>3} {'N':>3} {'return':>9} {'std':>8} {'score':>7} {'calls/act':>9} {'ms/act':>7}"]
        for r in rows:
            score = f"{r['normalized_score']:.1f}" if r["normalized_score"] != "" else "-"
            lines.append(f"{r['policy']:>8} {r['k']:>3} {r['N']:>3} {r['mean_return']:>9.1f} {r['return_std']:>8.1f} "
                         f"{score:>7} {r['compute_per_action']:>9.1f} {r['policy_ms_per_action']:>7.2f}")
        return "\n".join(lines)
    lines = [f"{'task':>4} {'policy':>8} {'k':>3} {'N':>3} {'success':>8} {'95% CI':>13} {'return':>8} "
             f"{'calls/act':>9} {'ms/act':>7}"]
    for r in rows:
        lines.append(f"{str(r['task']):>4} {r['policy']:>8} {r['k']:>3} {r['N']:>3} {r['success_rate']:>8.3f} "
                     f"[{r['success_ci_low']:.2f}, {r['success_ci_high']:.2f}] {r['mean_return']:>8.1f} "
                     f"{r['compute_per_action']:>9.1f} {r['policy_ms_per_action']:>7.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Sources: a checkpoint (any budget) or a SavedModel (its signatures), and the one evaluation call

DEFAULT_ENV = "cube-single-play"  # a SavedModel outside a run directory, without --env
DEFAULT_TASK = 2


class EvaluationError(ValueError):
    """A request the sources cannot serve; the message says what to pass instead."""


def _load_run_config(workdir):
    """(RunConfig, info) of a run directory, or (None, {}) when it has no readable config.json."""
    from pipeline.config import load_run_config

    try:
        run_config, _, _, info = load_run_config(str(workdir))
    except (FileNotFoundError, ValueError):
        return None, {}
    return run_config, dict(info or {})


class CheckpointSource:
    """A training run's agent; every cell goes through agent.act."""

    def __init__(self, workdir, checkpoint=None, cap_step_level: bool = False):
        from models import checkpoints
        from pipeline.config import load_run_config

        self.agent, self.agent_config, self.step = checkpoints.load_agent(str(workdir), checkpoint)
        self.run_config, _, _, info = load_run_config(str(workdir))
        self.run_info = dict(info or {})
        self.workdir = Path(workdir)
        self.cap_step_level = bool(cap_step_level)
        self.description = f"{workdir} (step {self.step})"

    def make_policy(self, cell):
        if cell.adaptive:
            return policies.make_adaptive_policy(self.agent, cell.k, cell.threshold, compare=cell.compare)
        return policies.make_agent_policy(self.agent, cell.k, cell.N, cap_step_level=self.cap_step_level)

    def check_cells(self, cells):
        from models import adaptive

        for cell in cells:
            if cell.adaptive:
                adaptive.step_levels(cell.k)  # a clear error for a cap that is not a power of two


class SavedModelSource:
    """An exported SavedModel; a cell needs its signature (act_k{k}[_best_of_{N}][_seeded])."""

    def __init__(self, path):
        from serving.versions import resolve_saved_model_dir

        self.path = Path(resolve_saved_model_dir(path))
        self.model = policies.load_saved_model(self.path)
        # RUN/export/N: the run's config (env, task) sits two levels up.
        self.run_config, self.run_info = _load_run_config(self.path.parent.parent)
        self.description = str(self.path)

    @staticmethod
    def signature_name(cell) -> str:
        return f"act_k{cell.k}" + (f"_best_of_{cell.N}" if cell.N > 1 else "")

    def make_policy(self, cell):
        return policies.make_saved_model_policy(self.path, self.signature_name(cell), loaded=self.model)

    def check_cells(self, cells):
        if any(cell.adaptive for cell in cells):
            raise EvaluationError("--adaptive_threshold needs --workdir=RUN: an export's act_adaptive "
                                  "signature has its threshold and cap fixed at export time")
        names = set(self.model.signatures.keys())
        missing = sorted({self.signature_name(c) for c in cells}
                         - {n[: -len("_seeded")] if n.endswith("_seeded") else n for n in names})
        if missing:
            raise EvaluationError(
                f"{self.path} has no signature for {missing} (it has {sorted(names)}). Choose budgets "
                "it exports with --euler_steps/--candidates, export them (serving/export.py --budgets/--best_of), "
                "or evaluate the run's checkpoint with --workdir=RUN (any budget)."
            )
        unseeded = sorted({self.signature_name(c) for c in cells} - {n[: -len("_seeded")] for n in names
                                                                     if n.endswith("_seeded")})
        if unseeded:
            print(f"evaluate.py: warning: {unseeded} have no _seeded twin; their noise (and results) will "
                  "differ from run to run.", file=sys.stderr)


def open_source(workdir=None, saved_model=None, checkpoint=None, cap_step_level: bool = False):
    """A CheckpointSource (`workdir`) or a SavedModelSource (`saved_model`); EvaluationError naming
    what is wrong otherwise."""
    if (workdir is None) == (saved_model is None):
        raise EvaluationError("pass exactly one of --workdir (a training run) and --saved_model (an export)")
    if saved_model is not None and cap_step_level:
        raise EvaluationError("--cap_step_level applies to --workdir checkpoints; an export fixes it when it "
                              "is made (python serving/export.py --cap_step_level)")
    try:
        if workdir is not None:
            return CheckpointSource(workdir, checkpoint, cap_step_level)
        return SavedModelSource(saved_model)
    except FileNotFoundError as error:
        flag = "--workdir" if workdir is not None else "--saved_model"
        raise EvaluationError(f"{flag}: {error}") from None
    except ValueError as error:
        raise EvaluationError(str(error)) from None


def open_sources(workdirs: Sequence = (), saved_model=None, checkpoint=None, last_checkpoints: Optional[int] = None,
                 cap_step_level: bool = False) -> list:
    """The sources of one evaluation: an export, one checkpoint of one run (`checkpoint`, default the
    latest), or the last `last_checkpoints` checkpoints of each run of `workdirs` (the paper's protocol:
    one run per training seed), in that order. EvaluationError naming what is wrong otherwise."""
    from pipeline import protocol

    workdirs = [Path(w) for w in workdirs]
    if saved_model is not None or not workdirs:
        if workdirs:
            raise EvaluationError("pass exactly one of --workdir (training runs) and --saved_model (an export)")
        if last_checkpoints is not None:
            raise EvaluationError("--last_checkpoints applies to --workdir runs; an export is one model")
        return [open_source(None, saved_model, checkpoint, cap_step_level)]
    if checkpoint is not None and (len(workdirs) > 1 or last_checkpoints is not None):
        raise EvaluationError("--checkpoint names one checkpoint of one run: drop it to evaluate several runs or "
                              "their last checkpoints (--last_checkpoints)")
    resolved = [w.resolve() for w in workdirs]
    repeated = sorted({str(w) for w in workdirs if resolved.count(w.resolve()) > 1})
    if repeated:
        raise EvaluationError(f"--workdir lists {repeated} more than once: pass each run (seed) once")
    sources = []
    for workdir in workdirs:
        if last_checkpoints is None:
            paths = [checkpoint]
        else:
            try:
                paths = protocol.last_checkpoints(workdir, int(last_checkpoints))
            except ValueError as error:
                raise EvaluationError(f"--last_checkpoints: {error}") from None
        sources += [open_source(workdir, None, path, cap_step_level) for path in paths]
    return sources


def source_identity(source) -> dict:
    """The run, training seed and checkpoint step a source's rows are labelled with (protocol rows)."""
    run_config = source.run_config
    if isinstance(source, CheckpointSource):
        return dict(run=str(source.workdir), train_seed=source.agent_config.seed, checkpoint_step=source.step)
    return dict(run=str(source.path), train_seed=run_config.agent.seed if run_config is not None else "",
                checkpoint_step="")


def default_output(source) -> Path:
    """RUN/scaling for a checkpoint; artifacts/evaluate/<model>-<version> for an export."""
    if isinstance(source, CheckpointSource):
        return source.workdir / "scaling"
    return Path("artifacts") / "evaluate" / f"{source.path.parent.name}-{source.path.name}"


def own_reward_env(sources, run_data, env, eval_env, several: bool):
    """The GymnasiumId a run on a dataset's own rewards (or an export with --eval_env) is evaluated in;
    None for OGBench evaluations. EvaluationError naming the field and value of an id gymnasium does not
    know, or a request this evaluation cannot serve."""
    from pipeline import environments

    own_runs = [data for data in run_data if data is not None and data.env is None]
    if eval_env is None and not own_runs:
        return None
    if several:
        raise EvaluationError("a run on a dataset's own rewards is evaluated one source at a time, without "
                              "--protocol, --last_checkpoints, several --workdir or --diagnostics")
    if env is not None:
        raise EvaluationError(f"--env={env} names an OGBench env; {'--eval_env' if eval_env else 'this run'} "
                              "evaluates in a gymnasium env: pass one of the two")
    if eval_env is not None:
        where = "--eval_env"
    elif own_runs[0].eval_env is not None:
        eval_env = own_runs[0].eval_env
        where = f"{sources[0].description}: config.json field 'data.eval_env'"
    else:
        raise EvaluationError(f"{sources[0].description} trained on a dataset's own rewards and names no eval env "
                              "(config.json 'data.eval_env' is null): pass --eval_env=GYM_ID")
    try:
        return environments.GymnasiumId(environments.check_registered(eval_env, where))
    except environments.UnregisteredEnv as error:
        raise EvaluationError(str(error)) from None


def _run_own_reward_evaluation(source, env, euler_steps, candidates, adaptive_thresholds, adaptive_max_euler_steps,
                               adaptive_compare, episodes, seed, num_envs, episode_length, vectorization, output,
                               show_progress) -> dict:
    """run_evaluation's grid on a dataset's own rewards (see there)."""
    from pipeline import environments, scores

    try:
        reference = scores.ReturnReference.from_record(getattr(source, "run_info", {}).get("dataset"))
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    output = Path(output) if output else default_output(source)
    output.mkdir(parents=True, exist_ok=True)
    cells = budget_grid(euler_steps, candidates, adaptive_thresholds, adaptive_max_euler_steps, adaptive_compare)
    source.check_cells(cells)
    start = time.perf_counter()
    try:
        rows = run_grid(source.make_policy, env, [None], cells, episodes, seed, num_envs=num_envs,
                        episode_length=episode_length, vectorization=vectorization, show_progress=show_progress,
                        reference=reference)
    finally:
        environments.close_environments()
    csv_path = write_csv(rows, output / "scaling.csv")
    plots = plot_scaling(rows, output, title=f"{env.id} (own rewards)", metric="mean_return")
    return dict(source=source.description, env=env.id, tasks=[], output=str(output), csv=str(csv_path),
                plots=[str(p) for p in plots], rows=len(rows), table=format_table(rows),
                seconds=round(time.perf_counter() - start, 1),
                dataset_return_mean=reference.dataset_mean, dataset_return_best=reference.dataset_best)


def run_evaluation(
    workdir=None,
    saved_model=None,
    checkpoint=None,
    cap_step_level: bool = False,
    env: Optional[str] = None,
    tasks: Optional[Sequence[int]] = None,
    euler_steps: Sequence[int] = DEFAULT_EULER_STEPS,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    adaptive_thresholds: Sequence[float] = (),
    adaptive_max_euler_steps: int = 8,
    episodes: int = 50,
    seed: int = 0,
    num_envs: Optional[int] = None,
    episode_length: Optional[int] = None,
    vectorization: str = "auto",
    output=None,
    grid: bool = True,
    diagnostics: bool = False,
    diagnostics_euler_steps: Optional[int] = None,
    data_dir=None,
    val_batches: int = 20,
    show_progress: bool = True,
    last_checkpoints: Optional[int] = None,
    adaptive_compare: Sequence[str] = ("across_levels",),
    paper_table: bool = False,
    eval_env: Optional[str] = None,
) -> dict:
    """Evaluate a checkpoint (`workdir`, any budget), the last checkpoints of several runs (`workdir`
    a list of run directories, one per training seed; `last_checkpoints`), or an export
    (`saved_model`, the budgets it has signatures for) over the budget grid, and optionally the
    critic diagnostics (one checkpoint only).

    env defaults to the runs' (they must agree; DEFAULT_ENV for an export outside a run directory);
    tasks to each run's own task (DEFAULT_TASK for an export without a run), else every run is
    evaluated on every task given; data_dir (for the TD error) to the run's prepared data;
    diagnostics_euler_steps to the agent's inference_euler_steps; output to `default_output(source)`
    for one run or export, artifacts/evaluate/paper-<env> for several runs.

    Writes to `output`: with `grid` and one source (one run's checkpoint, or an export), scaling.csv
    and the plots of `plot_scaling`; with `grid` and several sources (runs or checkpoints), or with
    `paper_table`, also the protocol's outputs (pipeline/protocol.py: protocol_rows.csv,
    paper_summary.csv, paper_table.md, paper_success_vs_k.png); with `diagnostics`,
    q_vs_return_task{T}.csv/.png per task and diagnostics.json.
    Returns a summary: source, env, tasks, output; with `grid` rows (count), seconds, and for one source
    csv, plots and table (format_table's text); with the protocol's outputs their paths and
    paper_table (the markdown); with `diagnostics` the per-task diagnostics summaries.
    A run on a dataset's own rewards (its config's data.env is null), or `eval_env` (a gymnasium id,
    registered in this process), is evaluated in that gymnasium env: rows without a task, with the
    return's std and the normalised score when the run's dataset record has reference scores, and
    return_vs_*.png plots; one source, no protocol or diagnostics.
    Raises EvaluationError for a request the sources cannot serve (the message says what to pass).
    """
    from pipeline import diagnostics as critic_diagnostics
    from pipeline import environments, protocol

    workdirs = [] if workdir is None else [workdir] if isinstance(workdir, (str, Path)) else list(workdir)
    sources = open_sources(workdirs, saved_model, checkpoint, last_checkpoints, cap_step_level)
    source = sources[0]
    if diagnostics and not isinstance(source, CheckpointSource):
        raise EvaluationError("--diagnostics needs the critic: pass --workdir=RUN (a checkpoint), not --saved_model")
    if diagnostics and len(sources) > 1:
        raise EvaluationError("--diagnostics measures one checkpoint: pass one --workdir, without --last_checkpoints")
    run_data = [s.run_config.data if s.run_config is not None else None for s in sources]
    own = own_reward_env(sources, run_data, env, eval_env, several=len(sources) > 1 or paper_table or diagnostics)
    if own is not None:
        return _run_own_reward_evaluation(source, own, euler_steps, candidates, adaptive_thresholds,
                                          adaptive_max_euler_steps, adaptive_compare, episodes, seed, num_envs,
                                          episode_length, vectorization, output, show_progress)
    try:
        names = {env_families.resolve_env(env or (data.env if data else None) or DEFAULT_ENV).name for data in run_data}
    except ValueError as error:
        raise EvaluationError(f"--env: {error}") from None
    if len(names) > 1:
        raise EvaluationError(f"the runs are of different environments ({sorted(names)}): evaluate each "
                              "environment on its own, or pass --env")
    env = names.pop()
    source_tasks = [list(tasks) if tasks else [int((data.task if data else None) or DEFAULT_TASK)]
                    for data in run_data]
    all_tasks = sorted({t for ts in source_tasks for t in ts})
    several = len(sources) > 1
    output = Path(output) if output else (Path("artifacts") / "evaluate" / f"paper-{env}" if several
                                          else default_output(source))
    output.mkdir(parents=True, exist_ok=True)
    description = source.description if not several else f"{len(sources)} checkpoints of {len(workdirs)} run(s)"
    summary = dict(source=description, env=env, tasks=all_tasks, output=str(output))

    try:
        if grid:
            cells = budget_grid(euler_steps, candidates, adaptive_thresholds, adaptive_max_euler_steps,
                                adaptive_compare)
            for s in sources:
                s.check_cells(cells)
            start = time.perf_counter()
            per_source = run_grids([(s.make_policy, ts) for s, ts in zip(sources, source_tasks)], env, cells,
                                   episodes, seed, num_envs=num_envs, episode_length=episode_length,
                                   vectorization=vectorization, show_progress=show_progress)
            summary.update(rows=sum(len(rows) for rows in per_source))
            if not several:
                rows = per_source[0] + (pooled_rows(per_source[0]) if len(source_tasks[0]) > 1 else [])
                csv_path = write_csv(rows, output / "scaling.csv")
                plots = plot_scaling(rows, output, title=f"{env}")
                summary.update(csv=str(csv_path), plots=[str(p) for p in plots], rows=len(rows),
                               table=format_table(rows))
            if several or paper_table:
                labelled = [dict(row, **source_identity(s)) for s, rows in zip(sources, per_source) for row in rows]
                try:
                    written = protocol.write_outputs(labelled, output, env)
                except ValueError as error:
                    raise EvaluationError(str(error)) from None
                summary.update(protocol_rows=written["protocol_rows"], summary_csv=written["summary_csv"],
                               paper_table_path=written["paper_table"], paper_plot=written["paper_plot"],
                               paper_table=written["table_markdown"])
            summary.update(seconds=round(time.perf_counter() - start, 1))
        if diagnostics:
            k = int(diagnostics_euler_steps or source.run_config.agent.inference_euler_steps)
            data_dir = data_dir or source.run_info.get("data_dir")
            summary["diagnostics"] = [
                critic_diagnostics.run_diagnostics(
                    source.agent, env, task, episodes, seed, k, data_dir, val_batches, output, num_envs=num_envs,
                    episode_length=episode_length, vectorization=vectorization, show_progress=show_progress,
                    cap_step_level=source.cap_step_level)
                for task in source_tasks[0]
            ]
            critic_diagnostics.write_diagnostics_json(summary["diagnostics"], output / "diagnostics.json")
    finally:
        environments.close_environments()
    return summary
