"""Data pipeline benchmarks: play-data generation, preprocessing, and the tf.data reader.

    python -m bench.bench_data generate   [--episodes=8 --episode_length=1001]
    python -m bench.bench_data preprocess [--rows=1000000]
    python -m bench.bench_data preprocess_minari [--rows=1000000]
    python -m bench.bench_data reader     [--rows=1000000 --batches=2000]
    python -m bench.bench_data all        (each of the above)
    common: [--repeats=3] [--workdir=artifacts/bench_data]

Each measurement is repeated; the median is printed as a markdown table row:
| benchmark | setting | median | unit | runs |.
- generate: environment steps per second of pipeline/generate.py, wall clock of the whole job
  (Beam start-up, env creation, rollouts, writing), with 1 worker (in-process DirectRunner)
  and 2 worker processes (multi_processing).
- preprocess: transitions per second of pipeline/preprocess.py (train + val), same two modes,
  on a --rows-row training file (and a tenth as val) made by tiling whole episodes of a small
  generated dataset, so every row keeps its own consistent observation/qpos.
- preprocess_minari: the same for a generic Minari source (own rewards, actions mapped from
  their bounds): a --rows-step Pendulum-v1 dataset written through minari's writer, made of
  200-step episodes recorded by data/gym_recording.py and repeated (D4RL MuJoCo datasets have
  episodes of this order), so the rate includes Minari's per-episode reads.
- reader: batches of 256 per second from data.reader.make_dataset (task 2, shuffled, repeated),
  consumed inside TensorFlow (Dataset.reduce, as a compiled training loop would), for
  cache=True and cache=False.
"""

import argparse
import os
import shutil
import statistics
import time

import tensorflow  # noqa: F401  (before MuJoCo, see the common brief)
import numpy as np

from data import gym_recording, minari_source, ogbench_source, reader
from pipeline.generate import generate_play_data
from pipeline.preprocess import preprocess

MODES = {"1 worker": (), "2 workers": ("--direct_num_workers=2", "--direct_running_mode=multi_processing")}
SEED_EPISODES, SEED_LENGTH = 10, 1001  # the small dataset that preprocess/reader data is tiled from


def _row(benchmark, setting, values, unit):
    median = statistics.median(values)
    runs = ", ".join(f"{value:,.0f}" for value in values)
    print(f"| {benchmark} | {setting} | {median:,.0f} | {unit} | {runs} |", flush=True)
    return median


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_generate(args):
    for mode, pipeline_args in MODES.items():
        seconds = []
        for repeat in range(args.repeats):
            output = os.path.join(args.workdir, f"generate-{repeat}")
            shutil.rmtree(output, ignore_errors=True)
            seconds.append(_timed(lambda: generate_play_data(
                env="cube-single", episodes=args.episodes, val_episodes=1, episode_length=args.episode_length,
                output_dir=output, seed=repeat, pipeline_args=pipeline_args, progress=False)))
            shutil.rmtree(output, ignore_errors=True)
        steps = (args.episodes + 1) * args.episode_length
        _row("generate", f"cube-single, {args.episodes}+1 episodes x {args.episode_length} rows, {mode}",
             [steps / s for s in seconds], "env steps/s")


def _tiled_source(args) -> str:
    """NAME.npz with --rows rows (and -val.npz with a tenth), tiled from whole generated episodes."""
    directory = os.path.join(args.workdir, f"tiled-{args.rows}")
    train_path = os.path.join(directory, "cube-single-play-v0.npz")
    if os.path.exists(train_path):
        return f"ogbench:{train_path}"
    seed_dir = os.path.join(args.workdir, "seed-data")
    length = min(SEED_LENGTH, max(2, args.rows // 4))
    if not os.path.exists(os.path.join(seed_dir, "cube-single-play-v0.npz")):
        shutil.rmtree(seed_dir, ignore_errors=True)
        generate_play_data(env="cube-single", episodes=SEED_EPISODES, val_episodes=1, episode_length=length,
                           output_dir=seed_dir, progress=False)
    with np.load(os.path.join(seed_dir, "cube-single-play-v0.npz")) as data:
        seed_rows = {key: data[key] for key in data.files}
    os.makedirs(directory, exist_ok=True)
    per_file = len(seed_rows["terminals"])
    val_path = ogbench_source.val_path_for(train_path)
    for path, rows in ((train_path, args.rows), (val_path, max(per_file, args.rows // 10))):
        copies = max(1, round(rows / per_file))  # whole copies: episodes stay whole
        tiled = {key: np.concatenate([value] * copies) for key, value in seed_rows.items()}
        with open(path, "wb") as handle:
            handle.write(ogbench_source.npz_bytes(tiled))
    return f"ogbench:{train_path}"


def _prepared(args) -> str:
    output = os.path.join(args.workdir, f"tfrecord-{args.rows}")
    if not os.path.exists(os.path.join(output, "metadata.json")):
        preprocess(_tiled_source(args), output, overwrite=True)
    return output


def _bench_conversion(args, source: str, label: str) -> None:
    """Rows of transitions/s of preprocess(source) in each of MODES; `label` names the data."""
    for mode, pipeline_args in MODES.items():
        rates = []
        for repeat in range(args.repeats):
            output = os.path.join(args.workdir, f"preprocess-{repeat}")
            shutil.rmtree(output, ignore_errors=True)
            metadata = {}
            seconds = _timed(lambda: metadata.update(preprocess(source, output, pipeline_args=pipeline_args)))
            rates.append(sum(metadata["counts"].values()) / seconds)
            shutil.rmtree(output, ignore_errors=True)
        _row("preprocess", f"{label}, {metadata['counts']['train']:,} + {metadata['counts']['val']:,} "
                           f"transitions, {mode}", rates, "transitions/s")


def bench_preprocess(args):
    _bench_conversion(args, _tiled_source(args), "cube-single npz")


MINARI_SEED_EPISODES, MINARI_EPISODE_STEPS = 20, 200


def _minari_source(args) -> str:
    """minari:bench/pendulum-N-v0 (and its -val dataset, a tenth) under WORKDIR/minari, built once."""
    root = os.path.join(args.workdir, "minari")
    os.environ["MINARI_DATASETS_PATH"] = root  # where the Beam job looks the dataset up
    dataset_id = f"bench/pendulum-{args.rows}-v0"
    if not minari_source.exists(dataset_id):
        recorded = gym_recording.record("Pendulum-v1", MINARI_SEED_EPISODES, seed=0, max_steps=MINARI_EPISODE_STEPS)
        for split_id, rows in ((minari_source.val_dataset_id(dataset_id), args.rows // 10), (dataset_id, args.rows)):
            count = max(1, round(rows / MINARI_EPISODE_STEPS))
            gym_recording.write_minari(split_id, [recorded[i % len(recorded)] for i in range(count)], "Pendulum-v1",
                                       root=root, max_steps=MINARI_EPISODE_STEPS)
    return f"minari:{dataset_id}"


def bench_preprocess_minari(args):
    _bench_conversion(args, _minari_source(args), f"minari Pendulum-v1 ({MINARI_EPISODE_STEPS}-step episodes)")


def bench_reader(args):
    data_dir = _prepared(args)
    for cache in (True, False):
        started = time.perf_counter()
        dataset = reader.make_dataset(data_dir, task=2, batch_size=256, seed=0, cache=cache)
        setup = time.perf_counter() - started
        for _ in dataset.take(10):  # warm up: threads started, buffers filled
            pass
        rates = []
        for _ in range(args.repeats):
            seconds = _timed(lambda: dataset.take(args.batches).reduce(np.int64(0), lambda n, _: n + 1).numpy())
            rates.append(args.batches / seconds)
        count = reader.load_metadata(data_dir)["counts"]["train"]
        _row("reader", f"batch 256, task 2, shuffled, {count:,} transitions, cache={cache} "
                       f"(make_dataset took {setup:.1f} s)", rates, "batches/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("generate", "preprocess", "preprocess_minari", "reader", "all"))
    parser.add_argument("--episodes", type=int, default=8, help="generate: training episodes per run")
    parser.add_argument("--episode_length", type=int, default=1001, help="generate: rows per episode")
    parser.add_argument("--rows", type=int, default=1_000_000, help="preprocess/reader: training rows")
    parser.add_argument("--batches", type=int, default=2000, help="reader: batches per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="artifacts/bench_data")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    print("| benchmark | setting | median | unit | runs |\n|---|---|---|---|---|", flush=True)
    for name, bench in (("generate", bench_generate), ("preprocess", bench_preprocess),
                        ("preprocess_minari", bench_preprocess_minari), ("reader", bench_reader)):
        if args.what in (name, "all"):
            bench(args)


if __name__ == "__main__":
    main()
