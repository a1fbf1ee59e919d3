"""Evaluate a trained SORL policy over a grid of inference budgets in the real environment: OGBench's,
or for a run on a dataset's own rewards the gymnasium env it names (or --eval_env=GYM_ID).

    python pipeline/evaluate.py --workdir=RUN --task=all --episodes=50 --output=RUN/scaling
    python pipeline/evaluate.py --saved_model=RUN/export/1 --euler_steps=1,2,4,8 --candidates=1,4
    python pipeline/evaluate.py --workdir=RUN --adaptive_threshold=0,0.001 --diagnostics
    python pipeline/evaluate.py --protocol=paper --workdir=RUN_S0,RUN_S1,RUN_S2 --last_checkpoints=3
    python pipeline/evaluate.py --merge=OUT_A/protocol_rows.csv,OUT_B/protocol_rows.csv --output=OUT

Budgets: Euler steps k (--euler_steps, default 1,2,4,8,16,32; --steps is its old spelling) crossed
with best-of-N candidates ranked by the critic (--candidates, default 1,2,4,8,16), plus one adaptive
row per --adaptive_threshold (models/adaptive.py). A checkpoint (--workdir) evaluates any budget
through `agent.act`; a SavedModel (--saved_model) needs a signature per budget
(act_k{k}[_best_of_{N}], seeded twins used when present). Same model, same seed: same numbers (a
checkpoint and its export agree too).

The paper's protocol (--protocol=paper: --episodes=50 --euler_steps=1,2,4,8 --candidates=1 unless
given): several run directories (--workdir repeated or comma-separated, one per training seed and
task), each evaluated on its own task (or on every --task given) at its last --last_checkpoints
checkpoints; per seed the checkpoints are averaged, across seeds mean +- std (pipeline/protocol.py).
--merge rebuilds that table from the protocol_rows.csv of evaluations run apart (tasks evaluated as
their training ends, or on several machines) without evaluating anything.

Writes to --output: for one checkpoint or export, scaling.csv (one row per task and budget, plus
task=all rows pooling the tasks), success_vs_k.png, success_vs_N.png, success_vs_compute.png; for
several checkpoints or with --protocol=paper, protocol_rows.csv (every evaluation), paper_summary.csv
(per seed and across seeds, per task and the mean over tasks), paper_table.md, paper_success_vs_k.png;
with --diagnostics also diagnostics.json, q_vs_return_task{T}.csv and q_vs_return_task{T}.png (how well the critic ranks
actions: Q of the actions taken against their Monte-Carlo returns, the TD error on the
validation split, and the budget input's ranking of k on validation states). On a dataset's own rewards: scaling.csv (no task; return_std and normalized_score
columns) and return_vs_k.png, return_vs_N.png, return_vs_compute.png. The work is
pipeline.scaling.run_evaluation.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Only argparse at module level: the vector env's worker processes import this entry point (the
# forkserver preloads __main__) and need only the environment code. main() imports TensorFlow
# (through pipeline.scaling) before any MuJoCo env exists (README, "Known issues").

ALL_TASKS = (1, 2, 3, 4, 5)
DEFAULT_EULER_STEPS = "1,2,4,8,16,32"
DEFAULT_CANDIDATES = "1,2,4,8,16"
DEFAULT_EPISODES = 50
# --protocol=paper: the paper's table (SORL Table 1: k in {1, 2, 4, 8}, 50 episodes per task)
PAPER_PROTOCOL = dict(euler_steps="1,2,4,8", candidates="1", episodes=DEFAULT_EPISODES)
ADAPTIVE_COMPARE_RULES = ("across_levels", "same_level")  # models.adaptive.COMPARE_RULES


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


def comma_items(flags: Sequence[str]) -> list:
    """The items of a repeatable flag that also takes comma lists, blanks dropped."""
    return [item.strip() for flag in flags for item in flag.split(",") if item.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", action="append",
                        help="training run directory (config.json, checkpoints/); repeat it or give a comma list "
                             "for several runs (one per training seed and task)")
    source.add_argument("--saved_model", help="exported SavedModel version folder (MODEL_BASE_PATH/N), or the "
                                              "base path (newest version)")
    source.add_argument("--merge", action="append",
                        help="protocol_rows.csv files of earlier --protocol=paper evaluations (repeat or comma "
                             "list): write one paper table from them without evaluating; needs --output")
    p.add_argument("--checkpoint", help="checkpoint path inside --workdir (default: the latest)")
    p.add_argument("--last_checkpoints", type=int, default=None,
                   help="evaluate each run's last N checkpoints and average them per seed (the paper: 3)")
    p.add_argument("--protocol", choices=["paper"], default=None,
                   help="the paper's table: --episodes=50 --euler_steps=1,2,4,8 --candidates=1 unless given; "
                        "writes paper_summary.csv, paper_table.md, paper_success_vs_k.png")
    p.add_argument("--env", help="OGBench dataset family or alias (default: the run's; cube-single-play for a "
                                 "SavedModel outside a run directory)")
    p.add_argument("--eval_env", help="gymnasium id (registered in this process) to evaluate a run on a dataset's "
                                      "own rewards in (default: the run's), or an export outside a run directory")
    p.add_argument("--task", help="task id 1..5, a comma list, or 'all' (default: each run's own task)")
    p.add_argument("--euler_steps", help=f"Euler step counts k (comma list; default {DEFAULT_EULER_STEPS})")
    p.add_argument("--steps", dest="deprecated_steps", help="deprecated spelling of --euler_steps")
    p.add_argument("--candidates", help=f"best-of-N candidate counts N (comma list; default {DEFAULT_CANDIDATES})")
    p.add_argument("--adaptive_threshold", default="",
                   help="adaptive-budget rows, one per relative Q-gain threshold (comma list; empty: none)")
    p.add_argument("--adaptive_max_steps", type=int, default=8,
                   help="cap on the Euler steps k of the adaptive rows (power of 2)")
    p.add_argument("--adaptive_compare", default="across_levels",
                   help="the adaptive rule's critic inputs, a comma list: across_levels (Q(s, a_2k, 2k) vs "
                        "Q(s, a_k, k)) and/or same_level (both at the cap); one row per threshold and rule")
    p.add_argument("--episodes", type=int, help=f"episodes per task and budget (default {DEFAULT_EPISODES}, "
                                                 "the paper's)")
    p.add_argument("--num_envs", type=int, default=None, help="episodes in flight (default 10)")
    p.add_argument("--vectorization", default="auto", choices=["auto", "sync", "async"],
                   help="gymnasium vector env: one process (sync) or a worker per env (async)")
    p.add_argument("--episode_length", type=int, default=None, help="default: the environment's")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed: start states and policy noise")
    p.add_argument("--cap_step_level", action="store_true",
                   help="checkpoints: for k > m_disc keep the step level d at log2(m_disc) "
                        "(more, smaller steps of the finest trained velocity) instead of log2 k")
    p.add_argument("--output", help="output directory (default: RUN/scaling, or artifacts/evaluate/NAME)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also measure the critic: Q vs Monte-Carlo return, TD error on validation data")
    p.add_argument("--diagnostics_steps", type=int, default=None,
                   help="Euler steps k of the diagnostics policy and critic (default: the agent's "
                        "inference_euler_steps)")
    p.add_argument("--diagnostics_only", action="store_true", help="skip the budget grid")
    p.add_argument("--data", help="prepared TFRecord directory for the TD error (default: the run's)")
    p.add_argument("--val_batches", type=int, default=20, help="validation batches of 256 for the TD error")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    euler_steps_flag = "--euler_steps"
    if args.deprecated_steps is not None:
        if args.euler_steps is not None:
            p.error("--steps is the old spelling of --euler_steps: pass only --euler_steps")
        print("evaluate.py: --steps is deprecated (it means Euler steps): use --euler_steps", file=sys.stderr)
        args.euler_steps, euler_steps_flag = args.deprecated_steps, "--steps"
    defaults = PAPER_PROTOCOL if args.protocol == "paper" else dict(
        euler_steps=DEFAULT_EULER_STEPS, candidates=DEFAULT_CANDIDATES, episodes=DEFAULT_EPISODES)
    if args.episodes is None:
        args.episodes = defaults["episodes"]
    if args.workdir is not None:
        args.workdir = comma_items(args.workdir)
        if not args.workdir:
            p.error("--workdir: give one or more run directories")
    if args.merge is not None:
        args.merge = comma_items(args.merge)
        if not args.merge or not args.output:
            p.error("--merge: give one or more protocol_rows.csv files and --output for the merged table")
    compare = [c.strip() for c in args.adaptive_compare.split(",") if c.strip()]
    if not compare or any(c not in ADAPTIVE_COMPARE_RULES for c in compare):
        p.error(f"--adaptive_compare={args.adaptive_compare!r}: expected a comma list of {ADAPTIVE_COMPARE_RULES}")
    args.adaptive_compare = compare
    if args.last_checkpoints is not None and args.last_checkpoints < 1:
        p.error(f"--last_checkpoints={args.last_checkpoints}: evaluate at least one checkpoint per run")
    try:
        args.euler_steps = parse_int_list(args.euler_steps or defaults["euler_steps"], euler_steps_flag)
        args.candidates = parse_int_list(args.candidates or defaults["candidates"], "--candidates")
        args.adaptive_threshold = parse_float_list(args.adaptive_threshold, "--adaptive_threshold")
        args.task = parse_tasks(args.task)
    except argparse.ArgumentTypeError as error:
        p.error(str(error))
    if args.diagnostics_only:
        args.diagnostics = True
    if args.episodes < 1:
        p.error(f"--episodes={args.episodes}: evaluate at least one episode")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.merge is not None:
        merge(args.merge, args.output, args.env)
        return
    from pipeline import diagnostics, scaling

    try:
        summary = scaling.run_evaluation(
            workdir=args.workdir, saved_model=args.saved_model, checkpoint=args.checkpoint,
            cap_step_level=args.cap_step_level, env=args.env, tasks=args.task, euler_steps=args.euler_steps,
            candidates=args.candidates, adaptive_thresholds=args.adaptive_threshold,
            adaptive_max_euler_steps=args.adaptive_max_steps, episodes=args.episodes, seed=args.seed,
            num_envs=args.num_envs, episode_length=args.episode_length, vectorization=args.vectorization,
            output=args.output, grid=not args.diagnostics_only, diagnostics=args.diagnostics,
            diagnostics_euler_steps=args.diagnostics_steps, data_dir=args.data, val_batches=args.val_batches,
            show_progress=not args.no_progress, last_checkpoints=args.last_checkpoints,
            adaptive_compare=args.adaptive_compare, paper_table=args.protocol == "paper", eval_env=args.eval_env)
    except scaling.EvaluationError as error:
        raise SystemExit(f"evaluate.py: {error}") from None
    if "table" in summary:
        print(summary["table"])
    if "paper_table" in summary:
        print(summary["paper_table"])
    if "diagnostics" in summary:
        print(json.dumps(diagnostics.json_ready(summary["diagnostics"]), indent=1))
    print(f"Wrote {summary['output']}")


def merge(paths: Sequence[str], output: str, env: Optional[str]) -> None:
    from pipeline import protocol

    try:
        rows = protocol.read_rows(paths)
        written = protocol.write_outputs(rows, output, env or "merged evaluations")
    except ValueError as error:
        raise SystemExit(f"evaluate.py --merge: {error}") from None
    print(written["table_markdown"])
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
