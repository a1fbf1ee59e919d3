"""The prepared TFRecord directory a training run reads, made on first use.

`pipeline/train.py` calls `ensure_dataset` before training: on a fresh machine it converts
OGBench's own files, or regenerates play data with the scripted oracles, through the Beam jobs
(pipeline/generate.py, pipeline/preprocess.py). The training library only reads a prepared directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from data import envs, reader, schema
from data.errors import DataError

DEFAULT_ARTIFACTS = Path("artifacts")  # relative to the working directory: data, runs, exports


def local_beam_args() -> list[str]:
    """Beam options for the local runner: one worker process per core."""
    return [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_processing"]


def check_dataset_matches(data, data_dir, metadata: dict) -> None:
    """DataError unless the dataset has the rewards `data` trains on and comes from `data.env`.

    An OGBench run (`data.env` set) reads the rewards of task `data.task` ('task{n}') and evaluates
    in the env family's OGBench environment, so a dataset of another family, or one that stores only
    its source's own rewards, cannot train it. A run on a dataset's own rewards (`data.env` None)
    reads reward key 'default', which every non-OGBench source stores. `data` is a
    pipeline.config.DataSpec.
    """
    path = Path(data_dir) / "metadata.json"
    keys = list(metadata["reward_keys"])
    wanted = data.reward_key  # the key the reader will look up
    if wanted not in keys:
        tasks = [key for key in keys if key.startswith("task")]
        if data.env is None:
            raise DataError(
                f"{path}: field 'reward_keys' is {keys}, with no '{wanted}' (a source's own rewards): this dataset "
                f"holds OGBench task rewards of field 'env' {metadata.get('env')!r}; train on them with "
                f"--env={metadata.get('env') or 'FAMILY'} --task=N.")
        hint = (f"pick --task from {[int(key[4:]) for key in tasks]}" if tasks else
                "this dataset stores only its source's own rewards: leave out --env to train on them "
                "(train.py --data=DIR). Minari episodes recorded in an OGBench env (with infos['qpos']) get "
                "task rewards from preprocess.py --env=FAMILY")
        raise DataError(f"{path}: field 'reward_keys' is {keys}, with no '{wanted}' for --task={data.task}: {hint}.")
    if data.env is None:
        return
    data_env = metadata.get("env")
    if data_env is not None and envs.resolve_env(data_env).name != data.env:
        raise DataError(f"{path}: field 'env' is {data_env!r} but this run's env is {data.env!r}: the agent "
                        f"would be evaluated in another env than its data's. Pass --env={data_env} or "
                        "--data of that env.")


def ensure_dataset(data, data_dir: Optional[str] = None, generate_episodes: Optional[int] = None,
                   artifacts: Path = DEFAULT_ARTIFACTS, prepare: bool = True) -> Path:
    """The prepared TFRecord directory for a run on `data` (a DataSpec), made on first use.

    Order: `data_dir` (--data) if given, checked against `data`; else ARTIFACTS/data/DATASET (or
    DATASET-Nep for `generate_episodes` N other than the paper's 1000, from ARTIFACTS/raw/Nep) if
    already prepared; else convert OGBench's own files if the user has them (~/.ogbench/data); else
    regenerate play data with the scripted oracles (cube-single, cube-double) and convert it with the
    Beam job. DataError when none of these can work, or when it would have to make the data and
    `prepare` is False (the workers of a multi-worker run, which would all make it at once).
    """
    if data_dir:
        # A clear error now beats one after the agent is built.
        check_dataset_matches(data, data_dir, reader.load_metadata(data_dir))
        return Path(data_dir)
    if data.env is None:
        raise DataError("a run on a dataset's own rewards needs its prepared data: pass --data=DIR "
                        "(pipeline/preprocess.py --input=minari:ID or npz:PATH --output=DIR makes it)")
    family = envs.resolve_env(data.env)
    dataset = family.dataset_name
    sized = generate_episodes is not None and int(generate_episodes) != envs.PLAY_EPISODES
    # Another size than the paper's gets folders of its own: a later run of the other size never
    # trains on it by mistake, and OGBench's own (paper-size) files are not a stand-in for it.
    prepared = Path(artifacts) / "data" / (f"{dataset}-{generate_episodes}ep" if sized else dataset)
    if (prepared / "metadata.json").exists():
        return prepared
    if not prepare:
        raise DataError(f"no prepared data in {prepared}, and the workers of --strategy=multi_worker do not make it "
                        "(each would): prepare it first (README steps 1 and 2, or a run without --strategy), "
                        "or pass --data=DIR shared by every worker.")
    raw_dir = Path(artifacts) / "raw" / (f"{generate_episodes}ep" if sized else "")
    candidates = ([] if sized else [Path("~/.ogbench/data").expanduser() / f"{dataset}.npz"]) + [raw_dir / f"{dataset}.npz"]
    npz = next((c for c in candidates if c.exists() and c.with_name(f"{dataset}-val.npz").exists()), None)
    beam_args = local_beam_args()
    if npz is None:
        if not family.can_generate:
            raise DataError(
                f"no prepared data for {family.name}: put OGBench's {dataset}.npz and {dataset}-val.npz in "
                "~/.ogbench/data, or pass --data=DIR (play data can be regenerated for cube-single and cube-double)"
            )
        from pipeline.generate import generate_play_data

        print(f"No data for {family.name}: regenerating play data with OGBench's scripted oracles into {raw_dir}.")
        kwargs = {} if generate_episodes is None else {"episodes": generate_episodes}
        npz = Path(generate_play_data(env=family.name, output_dir=str(raw_dir), seed=0, pipeline_args=beam_args,
                                      **kwargs)[0])
    from pipeline.preprocess import preprocess

    print(f"Converting {npz} to TFRecords in {prepared} (Apache Beam, DirectRunner).")
    preprocess(f"ogbench:{npz}", str(prepared), pipeline_args=beam_args)
    return prepared
