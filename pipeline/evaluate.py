"""Evaluate a trained SORL policy over a grid of inference budgets in the real OGBench environment.

    python pipeline/evaluate.py --workdir=RUN --task=all --episodes=50 --output=RUN/scaling
    python pipeline/evaluate.py --saved_model=RUN/export/1 --steps=1,2,4,8 --candidates=1,4
    python pipeline/evaluate.py --workdir=RUN --adaptive_threshold=0,0.001 --diagnostics

Budgets: Euler steps k (--steps, default 1,2,4,8,16,32) crossed with best-of-N candidates ranked by
the critic (--candidates, default 1,2,4,8,16), plus one adaptive row per --adaptive_threshold
(models/adaptive.py). A checkpoint (--workdir) evaluates any budget through `agent.act`; a
SavedModel (--saved_model) needs a signature per budget (act_k{k}[_best_of_{N}], seeded twins used
when present). Same model, same seed: same numbers (a checkpoint and its export agree too).

Writes to --output: scaling.csv (one row per task and budget, plus task=all rows pooling the tasks),
success_vs_k.png, success_vs_N.png, success_vs_compute.png; with --diagnostics also
diagnostics.json, q_vs_return_task{T}.csv and q_vs_return_task{T}.png (how well the critic ranks
actions: Q of the actions taken against their Monte-Carlo returns, and the TD error on the
validation split).
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow is imported inside main(), before any MuJoCo env exists (see README, "Known issues"),
# and not at module level: the vector env's worker processes import this script (the
# forkserver preloads __main__) and need only the environment code.

ALL_TASKS = (1, 2, 3, 4, 5)


def parse_int_list(text: str, flag: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}={text!r}: expected comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{flag}={text!r}: expected positive integers")
    return values


def parse_float_list(text: str, flag: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}={text!r}: expected comma-separated numbers") from None


def parse_tasks(text: Optional[str]) -> Optional[list]:
    if text is None:
        return None
    if text == "all":
        return list(ALL_TASKS)
    tasks = parse_int_list(text, "--task")
    if any(t not in ALL_TASKS for t in tasks):
        raise argparse.ArgumentTypeError(f"--task={text!r}: OGBench tasks are 1..5, or 'all'")
    return tasks


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training run directory (config.json, checkpoints/)")
    source.add_argument("--saved_model", help="exported SavedModel version folder (MODEL_BASE_PATH/N), or the "
                                              "base path (newest version)")
    p.add_argument("--checkpoint", help="checkpoint path inside --workdir (default: the latest)")
    p.add_argument("--env", help="OGBench dataset family or alias (default: the run's; cube-single-play for a "
                                 "SavedModel outside a run directory)")
    p.add_argument("--task", help="task id 1..5, a comma list, or 'all' (default: the run's task)")
    p.add_argument("--steps", default="1,2,4,8,16,32", help="Euler step counts k (comma list)")
    p.add_argument("--candidates", default="1,2,4,8,16", help="best-of-N candidate counts N (comma list)")
    p.add_argument("--adaptive_threshold", default="",
                   help="adaptive-budget rows, one per relative Q-gain threshold (comma list; empty: none)")
    p.add_argument("--adaptive_max_steps", type=int, default=8, help="cap on k for the adaptive rows (power of 2)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task and budget (the paper: 50)")
    p.add_argument("--num_envs", type=int, default=None, help="episodes in flight (default 10)")
    p.add_argument("--vectorization", default="auto", choices=["auto", "sync", "async"],
                   help="gymnasium vector env: one process (sync) or a worker per env (async)")
    p.add_argument("--episode_length", type=int, default=None, help="default: the environment's")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed: start states and policy noise")
    p.add_argument("--cap_step_level", action="store_const", const=True, default=None,
                   help="checkpoints: for k > m_disc keep the step level d at log2(m_disc) "
                        "(more, smaller steps of the finest trained velocity) instead of log2 k")
    p.add_argument("--output", help="output directory (default: RUN/scaling, or artifacts/evaluate/NAME)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also measure the critic: Q vs Monte-Carlo return, TD error on validation data")
    p.add_argument("--diagnostics_steps", type=int, default=None,
                   help="k of the diagnostics policy and critic (default: config.inference_steps)")
    p.add_argument("--diagnostics_only", action="store_true", help="skip the budget grid")
    p.add_argument("--data", help="prepared TFRecord directory for the TD error (default: the run's)")
    p.add_argument("--val_batches", type=int, default=20, help="validation batches of 256 for the TD error")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        args.steps = parse_int_list(args.steps, "--steps")
        args.candidates = parse_int_list(args.candidates, "--candidates")
        args.adaptive_threshold = parse_float_list(args.adaptive_threshold, "--adaptive_threshold")
        args.task = parse_tasks(args.task)
    except argparse.ArgumentTypeError as error:
        p.error(str(error))
    if args.diagnostics_only:
        args.diagnostics = True
    if args.episodes < 1:
        p.error(f"--episodes={args.episodes}: evaluate at least one episode")
    return args


# --------------------------------------------------------------------------------------------------
# Sources: a checkpoint (any budget) or a SavedModel (its signatures)


class CheckpointSource:
    """A training run's agent; every cell goes through agent.act."""

    def __init__(self, workdir, checkpoint=None, cap_step_level=None):
        from models import checkpoints

        self.agent, self.config, self.step = checkpoints.load_agent(str(workdir), checkpoint, cap_step_level)
        self.workdir = Path(workdir)
        self.run_config = _read_json(self.workdir / "config.json")
        self.description = f"{workdir} (step {self.step})"

    def make_policy(self, cell):
        from pipeline import evaluation

        if cell.adaptive:
            return evaluation.make_adaptive_policy(self.agent, cell.k, cell.threshold)
        return evaluation.make_agent_policy(self.agent, cell.k, cell.N)

    def check_cells(self, cells):
        from models import adaptive

        for cell in cells:
            if cell.adaptive:
                adaptive.step_levels(cell.k)  # a clear error for a cap that is not a power of two


class SavedModelSource:
    """An exported SavedModel; a cell needs its signature (act_k{k}[_best_of_{N}][_seeded])."""

    def __init__(self, path):
        from pipeline import evaluation

        self.path = resolve_saved_model_dir(path)
        self.model = evaluation.load_saved_model(self.path)
        self.config = None
        # RUN/export/N: the run's config (env, task) sits two levels up.
        self.run_config = _read_json(self.path.parent.parent / "config.json")
        self.description = str(self.path)

    @staticmethod
    def signature_name(cell) -> str:
        return f"act_k{cell.k}" + (f"_best_of_{cell.N}" if cell.N > 1 else "")

    def make_policy(self, cell):
        from pipeline import evaluation

        return evaluation.make_saved_model_policy(self.path, self.signature_name(cell), loaded=self.model)

    def check_cells(self, cells):
        if any(cell.adaptive for cell in cells):
            raise SystemExit("evaluate.py: --adaptive_threshold needs --workdir=RUN: an export's act_adaptive "
                             "signature has its threshold and cap fixed at export time")
        names = set(self.model.signatures.keys())
        missing = sorted({self.signature_name(c) for c in cells}
                         - {n[: -len("_seeded")] if n.endswith("_seeded") else n for n in names})
        if missing:
            raise SystemExit(
                f"evaluate.py: {self.path} has no signature for {missing} (it has {sorted(names)}). Choose budgets "
                "it exports with --steps/--candidates, export them (serving/export.py --budgets/--best_of), or "
                "evaluate the run's checkpoint with --workdir=RUN (any budget)."
            )
        unseeded = sorted({self.signature_name(c) for c in cells} - {n[: -len("_seeded")] for n in names
                                                                     if n.endswith("_seeded")})
        if unseeded:
            print(f"evaluate.py: warning: {unseeded} have no _seeded twin; their noise (and results) will "
                  "differ from run to run.", file=sys.stderr)


def resolve_saved_model_dir(path) -> Path:
    """A version folder (has saved_model.pb), or a base path whose newest integer version is used."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = sorted(int(p.name) for p in path.glob("*") if p.name.isdigit() and (p / "saved_model.pb").exists())
    if not versions:
        raise SystemExit(f"evaluate.py: --saved_model={path}: no saved_model.pb there nor in an integer version "
                         "folder under it; pass MODEL_BASE_PATH/N as written by serving/export.py")
    return path / str(versions[-1])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _run_field(run_config: dict, key: str):
    """A field of config.json, whether it nests the config (models.checkpoints) or is flat."""
    for container in (run_config.get("config", {}), run_config):
        if isinstance(container, dict) and key in container:
            return container[key]
    extra = run_config.get("extra", {})
    return extra.get(key) if isinstance(extra, dict) else None


# --------------------------------------------------------------------------------------------------
# Critic diagnostics


def run_diagnostics(source, env, task, episodes, seed, steps, data_dir, val_batches, num_envs, episode_length,
                    vectorization, output: Path, show_progress: bool) -> dict:
    """Q vs Monte-Carlo return of the actions the k-step policy takes, and the validation TD error."""
    from tqdm import tqdm

    from pipeline import evaluation

    agent = source.agent
    discount = float(agent.config.discount)
    policy = evaluation.make_agent_policy(agent, steps, 1)
    with tqdm(total=episodes, unit="ep", desc=f"diagnostics: task {task} k={steps}",
              disable=not show_progress, dynamic_ncols=True) as bar:
        rollout = evaluation.evaluate_policy(policy, env, task, episodes, seed, num_envs=num_envs,
                                             episode_length=episode_length, vectorization=vectorization,
                                             record=True, progress=bar.update)
    pairs = evaluation.q_versus_returns(agent, rollout["trajectories"], steps, discount)
    successful = pairs["episode_success"] > 0.5
    summary = dict(
        task=task, steps=steps, episodes=episodes, seed=seed, discount=discount,
        success_rate=rollout["success_rate"], transitions=int(len(pairs["q"])),
        pearson_q_vs_return=evaluation.pearson(pairs["q"], pairs["mc_return"]),
        spearman_q_vs_return=evaluation.spearman(pairs["q"], pairs["mc_return"]),
        pearson_successful_episodes=evaluation.pearson(pairs["q"][successful], pairs["mc_return"][successful]),
        spearman_successful_episodes=evaluation.spearman(pairs["q"][successful], pairs["mc_return"][successful]),
        q_mean=float(pairs["q"].mean()), mc_return_mean=float(pairs["mc_return"].mean()),
        q_minus_return_mean=float((pairs["q"] - pairs["mc_return"]).mean()),
        note="Monte-Carlo returns of truncated (unsuccessful) episodes miss their tail; the *_successful_episodes "
             "correlations use complete returns only.",
    )
    if data_dir:
        summary.update(validation_td_summary(agent, data_dir, task, steps, val_batches, seed))
    else:
        summary["td_error"] = "skipped: no --data and the run records no data directory"
    write_pairs_csv(pairs, output / f"q_vs_return_task{task}.csv")
    plot_q_vs_return(pairs, summary, output / f"q_vs_return_task{task}.png")
    return summary


def validation_td_summary(agent, data_dir, task, steps, val_batches, seed) -> dict:
    from data import reader
    from pipeline import evaluation

    dataset = reader.make_dataset(str(data_dir), split="val", task=task, batch_size=256, seed=seed,
                                  shuffle=False, repeat=False, cache=False, drop_remainder=False)
    errors = evaluation.validation_td_errors(agent, dataset.take(val_batches), steps, seed)
    return dict(td_data=str(data_dir), td_transitions=int(errors.size),
                td_error_mean=float(errors.mean()), td_error_abs_mean=float(abs(errors).mean()),
                td_error_rmse=float((errors ** 2).mean() ** 0.5))


def write_pairs_csv(pairs: dict, path: Path) -> None:
    from pipeline import scaling

    rows = [dict(episode=int(e), t=int(t), q=float(q), mc_return=float(g), episode_success=int(s))
            for e, t, q, g, s in zip(pairs["episode"], pairs["t"], pairs["q"], pairs["mc_return"],
                                     pairs["episode_success"])]
    scaling.write_csv(rows, path, columns=("episode", "t", "q", "mc_return", "episode_success"))


def plot_q_vs_return(pairs: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    success = pairs["episode_success"] > 0.5
    for mask, label, color in ((success, "successful episodes", "tab:green"),
                               (~success, "unsuccessful (truncated return)", "tab:red")):
        if mask.any():
            ax.scatter(pairs["mc_return"][mask], pairs["q"][mask], s=4, alpha=0.4, label=label, color=color)
    low = float(min(pairs["q"].min(), pairs["mc_return"].min()))
    high = float(max(pairs["q"].max(), pairs["mc_return"].max()))
    ax.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--", label="Q = return")
    ax.set_xlabel("Monte-Carlo discounted return from the step")
    ax.set_ylabel(f"Q(s, a, k={summary['steps']}) of the action taken")
    ax.set_title(f"task {summary['task']}: Pearson {summary['pearson_q_vs_return']:.2f}, "
                 f"Spearman {summary['spearman_q_vs_return']:.2f}")
    ax.legend(fontsize="small", markerscale=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _json_ready(value):
    """NaN (an undefined correlation) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(value, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_ready(value), indent=1) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------


def default_output(args, source) -> Path:
    if args.workdir:
        return Path(args.workdir) / "scaling"
    return Path("artifacts") / "evaluate" / f"{source.path.parent.name}-{source.path.name}"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tensorflow as tf  # noqa: F401  (before MuJoCo)

    from pipeline import evaluation, scaling

    try:
        if args.saved_model and args.cap_step_level:
            raise SystemExit("evaluate.py: --cap_step_level applies to --workdir checkpoints; an export "
                             "fixes it when it is made (python serving/export.py --cap_step_level)")
        source = (CheckpointSource(args.workdir, args.checkpoint, args.cap_step_level) if args.workdir
                  else SavedModelSource(args.saved_model))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"evaluate.py: {error}") from None
    env = args.env or _run_field(source.run_config, "env") or "cube-single-play"
    tasks = args.task or [int(_run_field(source.run_config, "task") or 2)]
    try:
        env = evaluation.resolve_env_family(env)
    except ValueError as error:
        raise SystemExit(f"evaluate.py: --env: {error}") from None
    output = Path(args.output) if args.output else default_output(args, source)
    output.mkdir(parents=True, exist_ok=True)
    show_progress = not args.no_progress
    summary = dict(source=source.description, env=env, tasks=tasks, output=str(output))

    try:
        if not args.diagnostics_only:
            cells = scaling.budget_grid(args.steps, args.candidates, args.adaptive_threshold, args.adaptive_max_steps)
            source.check_cells(cells)
            start = time.perf_counter()
            rows = scaling.run_grid(source.make_policy, env, tasks, cells, args.episodes, args.seed,
                                    num_envs=args.num_envs, episode_length=args.episode_length,
                                    vectorization=args.vectorization, show_progress=show_progress)
            csv_path = scaling.write_csv(rows, output / "scaling.csv")
            plots = scaling.plot_scaling(rows, output, title=f"{env}")
            summary.update(csv=str(csv_path), plots=[str(p) for p in plots], rows=len(rows),
                           seconds=round(time.perf_counter() - start, 1))
            print(format_table(rows))
        if args.diagnostics:
            if not isinstance(source, CheckpointSource):
                raise SystemExit("evaluate.py: --diagnostics needs the critic: pass --workdir=RUN (a checkpoint), "
                                 "not --saved_model")
            steps = args.diagnostics_steps or int(source.config.inference_steps)
            data_dir = args.data or _run_field(source.run_config, "data")
            summary["diagnostics"] = [
                run_diagnostics(source, env, task, args.episodes, args.seed, steps, data_dir, args.val_batches,
                                args.num_envs, args.episode_length, args.vectorization, output, show_progress)
                for task in tasks
            ]
            _write_json(summary["diagnostics"], output / "diagnostics.json")
            print(json.dumps(_json_ready(summary["diagnostics"]), indent=1))
    finally:
        evaluation.close_environments()
    print(f"Wrote {output}")
    return summary


def format_table(rows) -> str:
    """A short text table for the terminal: one line per row."""
    lines = [f"{'task':>4} {'policy':>8} {'k':>3} {'N':>3} {'success':>8} {'95% CI':>13} {'return':>8} "
             f"{'calls/act':>9} {'ms/act':>7}"]
    for r in rows:
        lines.append(f"{str(r['task']):>4} {r['policy']:>8} {r['k']:>3} {r['N']:>3} {r['success_rate']:>8.3f} "
                     f"[{r['success_ci_low']:.2f}, {r['success_ci_high']:.2f}] {r['mean_return']:>8.1f} "
                     f"{r['compute_per_action']:>9.1f} {r['policy_ms_per_action']:>7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
