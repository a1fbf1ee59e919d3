"""Converts OGBench, Minari, D4RL-style npz or TF-Agents data into the TFRecord dataset directory
of data/schema.py.

    python pipeline/preprocess.py --input=ogbench:artifacts/data/cube-single-play-v0.npz \
        --output=artifacts/data/cube-single-play-tfrecord [--num_shards=10] [--env=cube-single] \
        [--overwrite] [--direct_num_workers=2 --direct_running_mode=multi_processing]
    python pipeline/preprocess.py --input=minari:ogbench/cube-single-play-v0 --output=DIR
    python pipeline/preprocess.py --input=npz:pendulum.npz --eval_env=Pendulum-v1 --output=DIR

An OGBench or npz file's `-val.npz` sibling becomes the val split; a Minari dataset's val split
is 'NS/NAME-val-vN' if present. OGBench single-task data gets rewards/masks for tasks 1..5
exactly as ogbench's relabel_dataset computes them; other sources keep their own rewards
('default'). Actions of generic sources are mapped from their bounds onto [-1, 1]
(data/action_bounds.py); all are clipped here to +-data.schema.ACTION_CLIP. One Beam element per shard (a contiguous row range), encoded with
numpy in chunks; DirectRunner by default, any Beam runner with its usual options. The output
is staged in a hidden sibling directory and renamed into place whole, with metadata.json
written last.
"""

import argparse
import os
import sys
import time

import apache_beam as beam
import numpy as np

from data import envs, schema, sources
from data import stats as stats_lib
from data.errors import DataError
from pipeline import beam_jobs


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_metadata(source: sources.Source, tasks: list, shard_records: list, checksums: dict) -> dict:
    """metadata.json contents (see data.schema.METADATA_FIELDS) from the shards' summaries."""
    by_file = {record["file"]: record for record in shard_records}
    shards, counts, episodes, statistics = {}, {}, {}, {}
    for split in schema.SPLITS:
        split_tasks = [task for task in tasks if task.split == split]
        records = [by_file[task.file_name] for task in split_tasks]
        shards[split] = [{"file": r["file"], "count": r["count"], "bytes": r["bytes"]} for r in records]
        counts[split] = sum(r["count"] for r in records)
        episodes[split] = sum(r["episodes"] for r in records)
        merged = stats_lib.merge_all(
            {name: stats_lib.FeatureStats.from_state(state) for name, state in r["stats"].items()} for r in records)
        statistics[split] = {name: value.to_json() for name, value in sorted(merged.items())}
        expected = source.transitions_hint.get(split, 0)
        if counts[split] != expected:
            raise RuntimeError(f"{split}: wrote {counts[split]} transitions, expected {expected}")
    dataset_returns = {}
    for split in schema.SPLITS:
        split_returns = [r["returns"] for r in shard_records if r["split"] == split]
        if split_returns and all(part is not None for part in split_returns):
            dataset_returns[split] = return_summary([value for part in split_returns for value in part])
    family = envs.resolve_env(source.env) if source.env else None
    task_keys = [key for key in source.reward_keys if key in source.targets]
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "source": source.spec,
        "source_files": dict(source.inputs),
        "source_sha256": checksums,
        "source_checksum": sources.combined_checksum(checksums),
        "env": source.env,
        "env_id": source.env_id,
        "eval_env_names": {key: family.eval_env_name(int(key[4:])) for key in task_keys} if family else {},
        "obs_dim": source.obs_dim,
        "action_dim": source.action_dim,
        "reward_keys": list(source.reward_keys),
        "task_targets": _jsonable(source.targets),
        "action_clip": schema.ACTION_CLIP,
        "features": {name: list(shape) for name, shape in source.feature_shapes().items()},
        "counts": counts,
        "episodes": episodes,
        "statistics": statistics,
        "shards": shards,
        "action_bounds": source.action_bounds,
        "eval_env": source.eval_env,
        "ref_min_score": source.ref_min_score,
        "ref_max_score": source.ref_max_score,
        "dataset_returns": dataset_returns or None,
    }


def return_summary(returns) -> dict:
    """{mean, std, min, max, episodes} of undiscounted episode returns (population std)."""
    values = np.asarray(returns, np.float64)
    if not len(values):
        return {"mean": None, "std": None, "min": None, "max": None, "episodes": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "episodes": int(len(values))}


def preprocess(source: str, output_dir: str, num_shards: int | None = None, pipeline_args=(),
               env: str | None = None, overwrite: bool = False, eval_env: str | None = None,
               action_low: str | None = None, action_high: str | None = None) -> dict:
    """Writes the TFRecord dataset for `source` into `output_dir`; returns its metadata.

    Args:
      source: 'ogbench:PATH.npz', 'minari:DATASET_ID', 'npz:PATH.npz' (D4RL layout) or 'tf_agents:PATH'
        (TF-Agents trajectory files).
      output_dir: the dataset directory to create (local or a Beam filesystem URL).
      num_shards: train shards (default one per 100k transitions); val gets a proportional share.
      pipeline_args: Beam options, e.g. ('--direct_num_workers=2', '--direct_running_mode=multi_processing').
      env: env family, if the file name does not say it (e.g. 'cube-single').
      overwrite: replace an existing dataset at `output_dir`.
      eval_env: gymnasium id (registered) the data comes from, for sources that record none.
      action_low, action_high: the env's action bounds ('L' or 'L1,L2,...'), to map actions onto [-1, 1].
    """
    checked = sources.open_source(source, env, eval_env=eval_env, action_low=action_low, action_high=action_high)
    tasks = sources.plan_shards(checked, num_shards)
    check_output_apart(checked, output_dir)
    try:
        return _write_dataset(checked, tasks, output_dir, pipeline_args, overwrite)
    finally:
        sources.release_caches()  # the in-process runner read whole files into this process


def check_output_apart(source: sources.Source, output_dir: str) -> None:
    """DataError if `output_dir` is an input or holds one, or lies inside an input: replacing the
    output (--overwrite, or a rerun) would delete the input, and an output inside a Minari dataset
    becomes part of it."""
    if beam_jobs.is_remote(output_dir):
        return
    output = os.path.realpath(output_dir)
    for root in source.input_roots():
        if beam_jobs.is_remote(root):
            continue
        root = os.path.realpath(root)
        if output == root or os.path.commonpath([output, root]) in (output, root):
            raise DataError(f"--output={output_dir}: overlaps the input {root}; write the dataset to a "
                            f"directory outside the input.")


def _write_dataset(checked: sources.Source, tasks: list, output_dir: str, pipeline_args, overwrite: bool) -> dict:
    with beam_jobs.StagedDirectory(output_dir, overwrite=overwrite, marker=schema.METADATA_FILE) as staged:

        def build(pipeline):
            (pipeline
             | "Shards" >> beam.Create(tasks)
             | "Spread" >> beam.Reshuffle()
             | "Write" >> beam.ParDo(beam_jobs.WriteShardFn(checked, staged.path)))

        beam_jobs.run_pipeline(build, pipeline_args, elements=len(tasks))
        beam_jobs.raise_recorded_errors(staged.path)
        checksums = {path: sources.sha256_file(path) for path in checked.files()}
        stats_dir = beam_jobs.join(staged.path, beam_jobs.STATS_DIR)
        records = [beam_jobs.read_json(beam_jobs.join(stats_dir, f"{task.file_name}.json")) for task in tasks]
        metadata = build_metadata(checked, tasks, records, checksums)
        beam_jobs.FileSystems.delete([stats_dir])
        beam_jobs.write_json(beam_jobs.join(staged.path, schema.METADATA_FILE), metadata)  # last: marks completion
        staged.publish()
    return metadata


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="ogbench:PATH.npz, minari:DATASET_ID, npz:PATH.npz (D4RL layout) or tf_agents:PATH")
    parser.add_argument("--output", required=True, help="dataset directory to create")
    parser.add_argument("--num_shards", type=int, default=None, help="train shards (default: 1 per 100k transitions)")
    parser.add_argument("--env", default=None, help="env family if the input name does not say it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--eval_env", default=None,
                        help="registered gymnasium id to evaluate in, for sources that record none (e.g. Pendulum-v1)")
    parser.add_argument("--action_low", default=None, help="the env's lower action bounds, L or L1,L2,... (env units)")
    parser.add_argument("--action_high", default=None, help="the env's upper action bounds, H or H1,H2,...")
    args, pipeline_args = parser.parse_known_args(argv)
    beam_jobs.quiet_known_warnings()
    started = time.monotonic()
    try:
        metadata = preprocess(args.input, args.output, num_shards=args.num_shards, pipeline_args=pipeline_args,
                              env=args.env, overwrite=args.overwrite, eval_env=args.eval_env,
                              action_low=args.action_low, action_high=args.action_high)
    except DataError as error:
        sys.exit(f"preprocess.py: {error}")
    seconds = time.monotonic() - started
    total = sum(metadata["counts"].values())
    print(f"wrote {args.output}: {metadata['counts']} transitions, reward keys {metadata['reward_keys']}, "
          f"{seconds:.1f} s ({total / seconds:.0f} transitions/s)")


if __name__ == "__main__":
    main()
