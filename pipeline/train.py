"""Train SORL on an OGBench task (`python -m pipeline.train --env=cube`) or on any prepared dataset's
own rewards (`python -m pipeline.train --data=DIR`).

OGBench: on a fresh machine this regenerates the play data with OGBench's scripted oracles, converts
it to TFRecords with the Beam job, trains with the paper's settings for the env, evaluates in the real
environment, checkpoints (rerun the same command to resume) and exports a SavedModel.

Own rewards (--data of a Minari, npz or TF-Agents source, no --env): trains on reward key 'default'
with the paper's common settings (--preset=FAMILY for a family's, --set for any field), evaluates in
the gymnasium env the dataset names (metadata.json 'eval_env') or --eval_env=ID, reporting the mean
and std of the return (and the normalised score when the dataset has reference scores).
"""

import argparse
import os
import pathlib
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402,F401  (TF before MuJoCo: see README, "Known issues")

from data import reader  # noqa: E402
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
    p.add_argument("--env", default=None,
                   help="OGBench env: cube (= cube-single-play), cube-double, scene, ... (default: the --data "
                        "dataset's OGBench env; without one, the dataset's own rewards; without --data, cube)")
    p.add_argument("--scale", default="paper", choices=list(run_config.SCALES),
                   help="defaults sized for: the paper (4 x 512 networks, 1M steps, 1000 regenerated episodes) or "
                        "a 2-core CPU (3 x 256, 100k steps, 300 episodes: solves cube-single task 2 most of the "
                        "time in about an hour); flags and --set override any of them")
    p.add_argument("--preset", help="the agent settings of this env family (q_loss_coef, discount, q_agg) instead "
                                    "of the env's or, on own rewards, the paper's common ones")
    p.add_argument("--eval_env", help="own rewards: gymnasium id of the evaluation env, registered in this process "
                                      "(default: the dataset's metadata.json 'eval_env')")
    p.add_argument("--task", type=_integer, help="OGBench single-task id, 1..5 (default: the preset's)")
    p.add_argument("--steps", type=_integer, help="gradient steps, any positive number (default: the paper's 1M)")
    p.add_argument("--batch_size", type=_integer, help="global batch size (default 256)")
    p.add_argument("--seed", type=_integer, help="seed of the agent, data order and evaluation")
    p.add_argument("--eval_every", type=_integer, help="steps between evaluations in the environment (0: only at the end)")
    p.add_argument("--eval_episodes", type=_integer, help="episodes per budget per evaluation (0: no evaluation)")
    p.add_argument("--checkpoint_every", type=_integer, help="steps between checkpoints")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--workdir", help="run directory (default artifacts/runs/ENV-taskT-sSEED, or DATASET-sSEED on "
                                     "own rewards); reuse it to resume")
    p.add_argument("--data", help="prepared TFRecord directory (default: artifacts/data/DATASET, made if missing)")
    p.add_argument("--generate_episodes", type=_integer, default=None,
                   help="training episodes to regenerate when the data is missing (default: the paper's 1000; "
                        "--scale=cpu: 300); other sizes than 1000 get folders of their own")
    p.add_argument("--strategy", default="default", choices=list(training.STRATEGIES),
                   help="tf.distribute strategy: one device, all local devices (GPUs), a TPU, or several "
                        "machines (multi_worker: one process each, the same command, cluster in TF_CONFIG)")
    p.add_argument("--no_export", action="store_true", help="skip the SavedModel export at the end")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    return p.parse_args(argv)


def run_env(args, metadata: Optional[dict]) -> Optional[str]:
    """--env; else the --data dataset's OGBench family (field 'env'), None for a source's own rewards;
    cube without --data."""
    if args.env is not None:
        return args.env
    if metadata is not None:
        return metadata.get("env")
    return "cube"


def resolve_config(args, metadata: Optional[dict] = None) -> run_config.RunConfig:
    """The env's preset (or --preset's), then the typed flags (unset ones skipped), then --set KEY=VALUE.
    `metadata`: the --data dataset's; on own rewards its 'eval_env' unless --eval_env is given. An eval env
    id that gymnasium does not know in this process is refused (UnregisteredEnv, naming where it came from)
    unless --eval_episodes=0."""
    env = run_env(args, metadata)
    eval_env, where = args.eval_env, "--eval_env"
    if env is None and eval_env is None and metadata is not None:
        eval_env, where = metadata.get("eval_env"), f"{pathlib.Path(args.data) / 'metadata.json'}: field 'eval_env'"
    if eval_env is not None and args.eval_episodes != 0:
        from pipeline import environments

        environments.check_registered(eval_env, where)
    values = {
        "task": args.task, "gradient_steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "checkpoint_every": args.checkpoint_every,
        "eval_env": eval_env,
    }
    return run_config.make_run_config(env, values=values, overrides=args.set, preset=args.preset, scale=args.scale)


def default_workdir(config: run_config.RunConfig, data_dir=None) -> pathlib.Path:
    """artifacts/runs/ENV-taskT-sSEED; on own rewards artifacts/runs/DATASET-sSEED (DATASET: --data's folder name)."""
    if config.data.env is None:
        return datasets.DEFAULT_ARTIFACTS / "runs" / f"{pathlib.Path(data_dir).resolve().name}-s{config.agent.seed}"
    return datasets.DEFAULT_ARTIFACTS / "runs" / f"{config.data.env}-task{config.data.task}-s{config.agent.seed}"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metadata = reader.load_metadata(args.data) if args.data else None
        config = resolve_config(args, metadata)
    except ValueError as e:  # DataError and UnregisteredEnv too
        sys.exit(f"train.py: {e}")
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(config, args.data)
    try:
        episodes = args.generate_episodes or run_config.SCALE_GENERATE_EPISODES[args.scale]
        data_dir = datasets.ensure_dataset(config.data, args.data, generate_episodes=episodes,
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
