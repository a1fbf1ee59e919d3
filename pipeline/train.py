"""Train SORL on an OGBench task: `python -m pipeline.train --env=cube`.

On a fresh machine this regenerates the play data with OGBench's scripted oracles, converts it to
TFRecords with the Beam job, trains with the paper's settings for the env, evaluates in the real
environment, checkpoints (rerun the same command to resume) and exports a SavedModel.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402,F401  (TF before MuJoCo: see README, "Known issues")

from data.errors import DataError  # noqa: E402
from pipeline import config as run_config  # noqa: E402
from pipeline import datasets, training  # noqa: E402


def _integer(text: str) -> int:
    """An int flag that also takes 1e6 and 20_000; its range is checked with the config's fields."""
    try:
        number = float(text)
        if number.is_integer():
            return int(number)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="cube", help="env preset: cube (= cube-single-play), cube-double, scene, ...")
    p.add_argument("--task", type=_integer, help="OGBench single-task id, 1..5 (default: the preset's)")
    p.add_argument("--steps", type=_integer, help="gradient steps, any positive number (default: the paper's 1M)")
    p.add_argument("--batch_size", type=_integer, help="global batch size (default 256)")
    p.add_argument("--seed", type=_integer, help="seed of the agent, data order and evaluation")
    p.add_argument("--eval_every", type=_integer, help="steps between evaluations in the environment (0: only at the end)")
    p.add_argument("--eval_episodes", type=_integer, help="episodes per budget per evaluation (0: no evaluation)")
    p.add_argument("--checkpoint_every", type=_integer, help="steps between checkpoints")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--workdir", help="run directory (default artifacts/runs/ENV-taskT-sSEED); reuse it to resume")
    p.add_argument("--data", help="prepared TFRecord directory (default: artifacts/data/DATASET, made if missing)")
    p.add_argument("--generate_episodes", type=_integer, default=None,
                   help="training episodes to regenerate when the data is missing (default: the paper's 1000)")
    p.add_argument("--strategy", default="default", choices=list(training.STRATEGIES),
                   help="tf.distribute strategy: one device, all local devices (GPUs), a TPU, or several "
                        "machines (multi_worker: one process each, the same command, cluster in TF_CONFIG)")
    p.add_argument("--no_export", action="store_true", help="skip the SavedModel export at the end")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    return p.parse_args(argv)


def resolve_config(args) -> run_config.RunConfig:
    """The env's preset, then the typed flags (unset ones skipped), then --set KEY=VALUE."""
    values = {
        "task": args.task, "gradient_steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "checkpoint_every": args.checkpoint_every,
    }
    return run_config.make_run_config(args.env, values=values, overrides=args.set)


def default_workdir(config: run_config.RunConfig) -> pathlib.Path:
    return datasets.DEFAULT_ARTIFACTS / "runs" / f"{config.data.env}-task{config.data.task}-s{config.agent.seed}"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = resolve_config(args)
    except ValueError as e:
        sys.exit(f"train.py: {e}")
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(config)
    try:
        data_dir = datasets.ensure_dataset(config.data, args.data, generate_episodes=args.generate_episodes,
                                           prepare=args.strategy != "multi_worker")
        training.run_training(
            config, data_dir, workdir, strategy_name=args.strategy, export=not args.no_export,
            show_progress=not args.no_progress,
        )
    except (training.TrainingError, DataError) as e:
        sys.exit(f"train.py: {e}")
    except training.TrainingInterrupted as e:
        print(f"train.py: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signal_number)  # the shell's convention for "stopped by this signal"


if __name__ == "__main__":
    main()
