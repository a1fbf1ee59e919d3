"""Regenerates OGBench manipulation play data with OGBench's scripted oracle, as a Beam job.

    python pipeline/generate.py --env=cube-single --episodes=1000 --output=artifacts/data \
        [--seed=0] [--val_episodes=100] [--episode_length=1001] [--format=npz|minari] \
        [--direct_num_workers=2 --direct_running_mode=multi_processing]

writes OUTPUT/cube-single-play-v0.npz and OUTPUT/cube-single-play-v0-val.npz in OGBench's
own format (`ogbench.utils.load_dataset` reads them). One Beam element per episode: the
DirectRunner spreads episodes over local cores with the two options above, and other runners
take their usual options. Every episode is seeded from --seed, its split and its index, so a
command always writes the same bytes. With --format=minari the same episodes become the local
Minari datasets 'ogbench/cube-single-play-v0' and 'ogbench/cube-single-play-val-v0' (under
--output if given, else MINARI_DATASETS_PATH, else ~/.minari/datasets).

A killed or failed run keeps its finished episodes in OUTPUT/.generate-resume-ENV-seedSEED-lenLENGTH;
the same command again rolls out only the rest.
"""

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from data import envs, files, minari_source, ogbench_source, play_data
from data.errors import DataError
from pipeline import beam_jobs

DEFAULT_EPISODES = envs.PLAY_EPISODES
DEFAULT_EPISODE_LENGTH = 1001
MINARI_NAMESPACE = "ogbench"
# Each split is gathered in memory to write one file: 100x the paper's 1M rows (about 30 GB) at most.
MAX_ROWS_PER_SPLIT = 100_000_000
OWNER_FILE = "owner"
EPISODE_NAME = re.compile(r"(train|val)-\d{6,}")


def default_val_episodes(episodes: int) -> int:
    """A tenth of the training episodes (OGBench: 1000 train, 100 val), at least one."""
    return max(1, math.ceil(episodes / 10))


def minari_dataset_ids(family: envs.EnvFamily) -> tuple:
    """(train id, val id) of the Minari datasets that --format=minari writes."""
    train = f"{MINARI_NAMESPACE}/{family.dataset_name}"
    return train, minari_source.val_dataset_id(train)


def _check_arguments(family, episodes, val_episodes, episode_length, data_format):
    if not family.can_generate:
        generable = sorted(name for name, f in envs.FAMILIES.items() if f.can_generate)
        raise DataError(f"--env={family.name}: no play-data generator for this env; use one of {generable}.")
    if episodes < 1 or val_episodes < 1:
        raise DataError(f"--episodes={episodes} --val_episodes={val_episodes}: need >= 1 training and >= 1 "
                        f"validation episode.")
    if episode_length < 2:
        raise DataError(f"--episode_length={episode_length}: an episode needs at least 2 rows (one transition).")
    for flag, count in (("--episodes", episodes), ("--val_episodes", val_episodes)):
        if count * episode_length > MAX_ROWS_PER_SPLIT:
            raise DataError(f"{flag}={count} --episode_length={episode_length}: {count * episode_length} rows, more "
                            f"than the {MAX_ROWS_PER_SPLIT} one split may hold; generate fewer or shorter episodes.")
    if data_format not in ("npz", "minari"):
        raise DataError(f"--format={data_format}: use 'npz' (OGBench files) or 'minari'.")


def _run_with_progress(build, pipeline_args, episodes_dir, total_episodes, episode_length, show, resumed=0):
    """Runs the pipeline in a thread while a progress bar counts finished episode files (`resumed`
    of them were there before: they count as done but not towards the rate)."""
    from tqdm import tqdm

    failure = []

    def target():
        try:
            beam_jobs.run_pipeline(build, pipeline_args, elements=total_episodes)
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    runner = threading.Thread(target=target, name="beam-generate", daemon=True)
    started = time.monotonic()
    runner.start()
    with tqdm(total=total_episodes, unit="episode", disable=not show, desc="generate") as bar:
        while runner.is_alive():
            runner.join(timeout=0.5)
            done = len(beam_jobs.list_files(beam_jobs.join(episodes_dir, "*.npz")))
            bar.update(done - bar.n)
            elapsed = time.monotonic() - started
            bar.set_postfix(steps_per_s=f"{(done - resumed) * episode_length / max(elapsed, 1e-9):.0f}")
    if failure:
        raise failure[0]


def _gather(episodes_dir: str, split: str, count: int) -> list:
    """The episodes of one split, in index order."""
    episodes = []
    for index in range(count):
        path = beam_jobs.join(episodes_dir, f"{play_data.EpisodeTask(split, index, 0).name}.npz")
        with ogbench_source.open_binary(path) as handle, np.load(handle) as data:
            episodes.append({key: data[key] for key in data.files})
    return episodes


def _ogbench_arrays(episodes: list) -> dict:
    """Episodes concatenated in OGBench's file layout (no rewards: play data has none)."""
    keys = ("observations", "actions", "terminals", "qpos", "qvel")
    return {key: np.concatenate([episode[key] for episode in episodes]) for key in keys}


def _minari_buffers(episodes: list) -> list:
    """Minari episodes of the same transitions load_dataset keeps: each file row but the last is
    a step; the last row is the final observation; qpos/qvel ride along in infos."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for index, episode in enumerate(episodes):
        steps = len(episode["actions"]) - 1
        truncations = np.zeros(steps, bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(
            id=index, observations=episode["observations"], actions=episode["actions"][:steps],
            rewards=episode["rewards"][:steps], terminations=np.zeros(steps, bool), truncations=truncations,
            infos={"qpos": episode["qpos"], "qvel": episode["qvel"]},
        ))
    return buffers


def _write_minari(family, dataset_id: str, episodes: list, root: str, env_spec) -> str:
    """Creates the Minari dataset in `root` whole (minari_source.create_local_dataset)."""
    import gymnasium

    obs_dim, action_dim = episodes[0]["observations"].shape[1], episodes[0]["actions"].shape[1]
    return minari_source.create_local_dataset(
        dataset_id, _minari_buffers(episodes), root, env=env_spec,
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=gymnasium.spaces.Box(-1.0, 1.0, (action_dim,), np.float32),
        algorithm_name=f"CubePlanOracle(noise={play_data.ORACLE_NOISE}, "
                       f"noise_smoothing={play_data.ORACLE_NOISE_SMOOTHING})",
        author="sorl-tf pipeline/generate.py",
        description=f"OGBench {family.dataset_name} play data regenerated with OGBench's scripted oracle.",
    )


def _resume_dir(output_dir: str, family, seed: int, episode_length: int) -> str:
    """The folder that holds finished episodes until both outputs are written, named after what
    makes an episode's bytes (env, seed, length) so that a rerun of a killed or failed job finds
    them and rolls out only the rest. Locally it is claimed by this process while the job runs."""
    work_dir = beam_jobs.join(output_dir, f".generate-resume-{family.name}-seed{seed}-len{episode_length}")
    if beam_jobs.is_remote(work_dir):
        beam_jobs.FileSystems.delete(beam_jobs.list_files(beam_jobs.join(work_dir, beam_jobs.ERRORS_DIR, "*.txt")))
        return work_dir
    os.makedirs(work_dir, exist_ok=True)
    owner_file = os.path.join(work_dir, OWNER_FILE)
    try:
        host, pid = open(owner_file).read().split()
        pid = int(pid)
    except (FileNotFoundError, ValueError):  # no owner yet, or a file cut short by a kill
        host, pid = None, None
    if host == files.host_name() and pid != os.getpid() and files.process_alive(pid):
        raise DataError(f"{output_dir}: another generate.py (process {pid}) is generating these episodes "
                        f"({work_dir}); wait for it to finish or choose another --output.")
    files.write_text(owner_file, f"{files.host_name()} {os.getpid()}\n")
    # Errors recorded by the last run are its own: this run retries their episodes.
    shutil.rmtree(os.path.join(work_dir, beam_jobs.ERRORS_DIR), ignore_errors=True)
    for leftover in files.leftover_temporaries(os.path.join(work_dir, beam_jobs.EPISODES_DIR)):
        leftover.unlink()  # writes cut short by a kill
    return work_dir


def _finished_episodes(episodes_dir: str) -> set:
    """Names of the episodes already written whole (episode files are renamed into place)."""
    names = set()
    for path in beam_jobs.list_files(beam_jobs.join(episodes_dir, "*.npz")):
        name = path.rsplit("/", 1)[-1][:-len(".npz")]
        if EPISODE_NAME.fullmatch(name):
            names.add(name)
    return names


def _leave_resume_dir(work_dir: str, keep: bool) -> None:
    """Deletes the folder after success; after a failure keeps the finished episodes for a rerun."""
    if keep and _finished_episodes(beam_jobs.join(work_dir, beam_jobs.EPISODES_DIR)):
        if not beam_jobs.is_remote(work_dir):
            os.remove(os.path.join(work_dir, OWNER_FILE))
        print(f"generate.py: the finished episodes stay in {work_dir}; rerun the same command to go on from them.",
              file=sys.stderr)
    elif beam_jobs.is_remote(work_dir):
        beam_jobs.FileSystems.delete([work_dir])
    else:
        shutil.rmtree(work_dir, ignore_errors=True)


def generate_play_data(env: str = "cube-single", episodes: int = DEFAULT_EPISODES, output_dir: str | None = None,
                       seed: int = 0, val_episodes: int | None = None,
                       episode_length: int = DEFAULT_EPISODE_LENGTH, pipeline_args=(), data_format: str = "npz",
                       overwrite: bool = False, progress: bool = True) -> tuple:
    """Generates play data; returns (train_path, val_path).

    npz: the two OGBench files in `output_dir`. minari: the two dataset directories under
    `output_dir` (if given; else MINARI_DATASETS_PATH). Existing outputs are an error unless
    overwrite=True. `pipeline_args` are Beam options, e.g. ('--direct_num_workers=2',
    '--direct_running_mode=multi_processing').
    """
    family = envs.resolve_env(env)
    val_episodes = default_val_episodes(episodes) if val_episodes is None else int(val_episodes)
    episodes, episode_length = int(episodes), int(episode_length)
    _check_arguments(family, episodes, val_episodes, episode_length, data_format)

    if data_format == "npz":
        if not output_dir:
            raise DataError("--output: required for --format=npz (the directory for the .npz files).")
        output_dir = str(output_dir)
        finals = {"train": beam_jobs.join(output_dir, f"{family.dataset_name}.npz")}
        finals["val"] = ogbench_source.val_path_for(finals["train"])
    else:
        output_dir = str(output_dir or minari_source.datasets_root())
        ids = dict(zip(("train", "val"), minari_dataset_ids(family)))
        finals = {split: os.path.join(output_dir, dataset_id) for split, dataset_id in ids.items()}
    for path in finals.values():
        if not overwrite and beam_jobs.FileSystems.exists(path):
            raise DataError(f"{path}: already exists; pass --overwrite to replace it or choose another --output.")
        if data_format == "npz" and os.path.isdir(path):  # never replace a directory with a file
            raise DataError(f"{path}: is a directory; choose another --output.")
    if not beam_jobs.is_remote(output_dir):
        try:
            os.makedirs(output_dir, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=output_dir, prefix=".generate-probe-")
            probe.close()  # fail now, not after the rollouts, if the files cannot be written here
        except OSError as error:
            raise beam_jobs.output_error(output_dir, error) from None

    files.remove_stale_staging(output_dir, ".generate")  # per-process folders of older versions
    work_dir = _resume_dir(output_dir, family, seed, episode_length)
    episodes_dir = beam_jobs.join(work_dir, beam_jobs.EPISODES_DIR)
    tasks = ([play_data.EpisodeTask("train", i, seed) for i in range(episodes)]
             + [play_data.EpisodeTask("val", i, seed) for i in range(val_episodes)])
    finished = _finished_episodes(episodes_dir)
    todo = [task for task in tasks if task.name not in finished]
    if progress and len(todo) < len(tasks):
        print(f"generate.py: resuming: {len(tasks) - len(todo)} of {len(tasks)} episodes already in {work_dir}")

    def build(pipeline):
        import apache_beam as beam

        (pipeline
         | "Episodes" >> beam.Create(todo)
         | "Spread" >> beam.Reshuffle()
         | "Rollout" >> beam.ParDo(beam_jobs.RolloutEpisodeFn(family.name, episode_length, work_dir)))

    succeeded = False
    try:
        if todo:
            _run_with_progress(build, pipeline_args, episodes_dir, len(tasks), episode_length, progress,
                               resumed=len(tasks) - len(todo))
        beam_jobs.raise_recorded_errors(work_dir)
        if data_format == "minari":
            spec_env = play_data.make_env(family, episode_length)
            env_spec = spec_env.spec  # recorded in the Minari metadata: env id, kwargs, episode length
            spec_env.close()
        # Val first: the training output is what preprocess looks for, so it lands last. One
        # split in memory at a time.
        for split, count in (("val", val_episodes), ("train", episodes)):
            split_episodes = _gather(episodes_dir, split, count)
            if data_format == "npz":
                beam_jobs.write_bytes(finals[split], ogbench_source.npz_bytes(_ogbench_arrays(split_episodes)))
            else:
                _write_minari(family, ids[split], split_episodes, output_dir, env_spec)
            del split_episodes
        succeeded = True
    except OSError as error:  # the output went away or filled up while the job ran
        raise beam_jobs.output_error(output_dir, error) from None
    finally:
        _leave_resume_dir(work_dir, keep=not succeeded)
    return finals["train"], finals["val"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="cube-single", help="env to collect (cube-single, cube-double)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="training episodes")
    parser.add_argument("--val_episodes", type=int, default=None, help="validation episodes (default: a tenth)")
    parser.add_argument("--episode_length", type=int, default=DEFAULT_EPISODE_LENGTH, help="rows per episode")
    parser.add_argument("--output", default=None, help="output directory (npz) or Minari datasets root")
    parser.add_argument("--seed", type=int, default=0, help="root seed of every episode")
    parser.add_argument("--format", dest="data_format", default="npz", choices=("npz", "minari"))
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args, pipeline_args = parser.parse_known_args(argv)
    beam_jobs.quiet_known_warnings()
    started = time.monotonic()
    try:
        train_path, val_path = generate_play_data(
            env=args.env, episodes=args.episodes, output_dir=args.output, seed=args.seed,
            val_episodes=args.val_episodes, episode_length=args.episode_length, pipeline_args=pipeline_args,
            data_format=args.data_format, overwrite=args.overwrite, progress=not args.no_progress)
    except DataError as error:
        sys.exit(f"generate.py: {error}")
    print(f"wrote {train_path} and {val_path} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
