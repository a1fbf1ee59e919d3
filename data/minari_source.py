"""Local Minari datasets as a transition source.

A Minari episode of T steps holds observations [T+1, obs_dim], actions [T, A], rewards [T],
terminations [T] and truncations [T]; its transitions are (obs[t], actions[t], obs[t+1]).
They become: reward key 'default' with rewards/default = rewards[t] and
masks/default = 1 - terminations[t] (a truncated episode still bootstraps), and
terminals = 1 on each episode's last transition (terminated or truncated).

When the dataset is OGBench play data (its name is an OGBench dataset family and its episodes
carry infos['qpos'], as pipeline/generate.py --format=minari writes them), the five task
rewards are relabelled from qpos exactly as for the .npz files.

The validation split of 'NS/NAME-vN' is the dataset 'NS/NAME-val-vN' when it exists.
Datasets are looked up under MINARI_DATASETS_PATH (default ~/.minari/datasets).
"""

import functools
import os
import shutil

import numpy as np

from data import ogbench_source, relabel, schema
from data.errors import DataError

DEFAULT_REWARD_KEY = "default"


def _parse(dataset_id: str) -> tuple:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        return parse_dataset_id(dataset_id)
    except ValueError:
        raise DataError(
            f"minari:{dataset_id}: not a Minari dataset id; use 'NAMESPACE/NAME-vN' or 'NAME-vN'."
        ) from None


def dataset_name(dataset_id: str) -> str:
    """'ogbench/cube-single-play-v0' -> 'cube-single-play'."""
    return _parse(dataset_id)[1]


def val_dataset_id(dataset_id: str) -> str:
    """The id of the validation dataset that belongs to `dataset_id`."""
    namespace, name, version = _parse(dataset_id)
    return f"{namespace + '/' if namespace else ''}{name}-val-v{version}"


def datasets_root() -> str:
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")


def data_path(dataset_id: str) -> str:
    """The directory holding a local dataset's data files (it may not exist)."""
    return os.path.join(datasets_root(), dataset_id, "data")


def exists(dataset_id: str) -> bool:
    return os.path.isdir(data_path(dataset_id))


def create_local_dataset(dataset_id: str, buffers: list, root: str, **writer_args) -> str:
    """Writes a Minari dataset with minari.create_dataset_from_buffers(dataset_id, buffers,
    **writer_args) into `root` whole: built in a scratch root (minari writes where
    MINARI_DATASETS_PATH points at call time) and renamed into place, replacing an existing one.
    Returns the dataset's directory."""
    import warnings

    import minari

    from pipeline import beam_jobs

    os.makedirs(root, exist_ok=True)
    beam_jobs.remove_stale_staging(root, ".minari")
    scratch = beam_jobs.staging_path(root, ".minari")
    os.makedirs(scratch)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = scratch
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari warns about optional metadata fields
            minari.create_dataset_from_buffers(dataset_id, buffers, **writer_args)
        namespace, _, _ = _parse(dataset_id)
        if namespace:
            os.makedirs(os.path.join(root, namespace), exist_ok=True)
            namespace_metadata = os.path.join(scratch, namespace, "namespace_metadata.json")
            if os.path.exists(namespace_metadata) and not os.path.exists(
                    os.path.join(root, namespace, "namespace_metadata.json")):
                shutil.copy(namespace_metadata, os.path.join(root, namespace))
        final = os.path.join(root, dataset_id)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(os.path.join(scratch, dataset_id), final)
        return final
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(scratch, ignore_errors=True)


@functools.lru_cache(maxsize=4)
def _open(path: str, stamp):
    del stamp  # cache key only
    import minari

    return minari.MinariDataset(path)


def open_dataset(dataset_id: str, path: str | None = None):
    """The MinariDataset at `path` (default: its local directory); DataError if absent/unreadable."""
    path = path or data_path(dataset_id)
    if not os.path.isdir(path):
        local = sorted(_local_ids())
        raise DataError(
            f"minari:{dataset_id}: no local Minari dataset at {path} (MINARI_DATASETS_PATH="
            f"{datasets_root()}; local datasets: {local or 'none'}); create it (for example "
            f"pipeline/generate.py --format=minari) or set MINARI_DATASETS_PATH."
        )
    try:
        stat = os.stat(os.path.join(path, "metadata.json"))
        return _open(path, (stat.st_size, stat.st_mtime_ns))
    except Exception as error:  # minari raises many types for a broken directory
        raise DataError(
            f"minari:{dataset_id}: cannot open {path} ({type(error).__name__}: {error}); the "
            f"dataset is incomplete or corrupt: recreate it."
        ) from None


def _local_ids() -> list:
    root = datasets_root()
    found = []
    for parent, _, files in os.walk(root):
        if os.path.basename(parent) == "data" and "metadata.json" in files:
            found.append(os.path.relpath(os.path.dirname(parent), root))
    return found


def describe(dataset_id: str) -> dict:
    """{obs_dim, action_dim, episodes, steps, has_qpos, path} of a local dataset; DataError if unusable."""
    import gymnasium

    _parse(dataset_id)
    dataset = open_dataset(dataset_id)
    spaces = {"observation": dataset.observation_space, "action": dataset.action_space}
    for what, space in spaces.items():
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            raise DataError(
                f"minari:{dataset_id}: field '{what}s' has space {space}; only flat Box "
                f"observations and actions can be stored as transitions."
            )
    episodes = int(dataset.total_episodes)
    if episodes == 0:
        raise DataError(f"minari:{dataset_id}: the dataset has no episodes.")
    (first,) = read_episodes(dataset, dataset_id, [0])
    infos = first.infos or {}
    qpos_dim = None
    if "qpos" in infos:
        qpos = np.asarray(infos["qpos"])
        ogbench_source.check_numeric(f"minari:{dataset_id} episode {first.id}", "infos/qpos", qpos.dtype)
        qpos_dim = int(qpos.shape[1]) if qpos.ndim == 2 else None
        if qpos_dim is None:
            raise DataError(f"minari:{dataset_id} episode {first.id}: field 'infos/qpos' has shape "
                            f"{qpos.shape}, expected [steps + 1, nq]; the dataset is inconsistent: recreate it.")
    return {
        "obs_dim": int(dataset.observation_space.shape[0]),
        "action_dim": int(dataset.action_space.shape[0]),
        "episodes": episodes,
        "steps": int(dataset.total_steps),
        "has_qpos": "qpos" in infos,
        "qpos_dim": qpos_dim,
        "path": data_path(dataset_id),
    }


def read_episodes(dataset, dataset_id: str, indices: list) -> list:
    """The episodes at `indices`; DataError if the data file lacks a field or cannot be read."""
    try:
        return list(dataset.iterate_episodes(episode_indices=list(indices)))
    except Exception as error:  # h5py raises KeyError, OSError, ValueError, ... for a broken file
        detail = " ".join(str(error).split())
        raise DataError(
            f"minari:{dataset_id}: cannot read episodes {indices[0]}..{indices[-1]} ({type(error).__name__}: "
            f"{detail}); the dataset is incomplete or corrupt: recreate it."
        ) from None


def _check_episode_field(where: str, field: str, values: np.ndarray, rows: int, width: int | None) -> None:
    """DataError unless values are real numbers of shape [rows] (width None) or [rows, width]."""
    ogbench_source.check_numeric(where, field, values.dtype)
    expected = (rows,) if width is None else (rows, width)
    if values.shape != expected:
        raise DataError(
            f"{where}: field {field!r} has shape {list(values.shape)}, expected {list(expected)} for "
            f"{expected[0] - (field == 'observations')} steps; the dataset is inconsistent: recreate it."
        )


def transitions(dataset_id: str, path: str, kind: str | None, targets: dict, start: int, stop: int,
                qpos_dim: int | None = None):
    """Transitions of episodes [start, stop) as (columns, episodes); see the module docstring.

    `targets` maps task reward keys to goals (data.envs.task_targets), used with qpos (of width
    `qpos_dim`, the env family's) when `kind` is set; 'default' always comes from the stored rewards.
    """
    dataset = open_dataset(dataset_id, path)
    where = f"minari:{dataset_id}"
    obs_dim, action_dim = int(dataset.observation_space.shape[0]), int(dataset.action_space.shape[0])
    parts = []
    for episode in read_episodes(dataset, dataset_id, range(start, stop)):
        observations = np.asarray(episode.observations)
        actions = np.asarray(episode.actions)
        lengths = [np.shape(values)[0] if np.ndim(values) else 0 for values in
                   (actions, episode.rewards, episode.terminations, episode.truncations)]
        steps = int(np.median(lengths + [len(observations) - 1]))  # so the one odd field is the one named
        for field, values, rows, width in [
                ("observations", observations, steps + 1, obs_dim), ("actions", actions, steps, action_dim),
                ("rewards", episode.rewards, steps, None), ("terminations", episode.terminations, steps, None),
                ("truncations", episode.truncations, steps, None)]:
            _check_episode_field(f"{where} episode {episode.id}", field, np.asarray(values), rows, width)
        episode_where = f"{where} episode {episode.id}"
        ogbench_source.check_finite(episode_where, "observations", observations, 0)
        ogbench_source.check_finite(episode_where, "actions", actions, 0)
        ogbench_source.check_finite(episode_where, "rewards", np.asarray(episode.rewards), 0)
        ogbench_source.check_actions(episode_where, actions, 0)
        terminations = np.asarray(episode.terminations, bool)
        ends = terminations | np.asarray(episode.truncations, bool)
        ends[-1:] = True  # a zero-step episode has no transition to end
        columns = {
            schema.OBSERVATIONS: observations[:-1],
            schema.ACTIONS: np.clip(actions, -schema.ACTION_CLIP, schema.ACTION_CLIP),
            schema.NEXT_OBSERVATIONS: observations[1:],
            schema.TERMINALS: ends,
            schema.reward_feature(DEFAULT_REWARD_KEY): np.asarray(episode.rewards),
            schema.mask_feature(DEFAULT_REWARD_KEY): 1.0 - terminations,
        }
        if targets:
            infos = episode.infos or {}
            if "qpos" not in infos:
                raise DataError(f"{episode_where}: missing field infos['qpos'] needed for task rewards.")
            qpos = np.asarray(infos["qpos"])
            _check_episode_field(episode_where, "infos/qpos", qpos[:steps], steps, qpos_dim)
            qpos = qpos[:steps]
            ogbench_source.check_finite(episode_where, "infos/qpos", qpos, 0)
            buttons = np.asarray(infos["button_states"])[:steps] if kind == "scene" else None
            for key, task_targets in targets.items():
                rewards, masks = relabel.task_rewards(kind, task_targets, qpos, buttons)
                columns[schema.reward_feature(key)] = rewards
                columns[schema.mask_feature(key)] = masks
        parts.append(columns)
    merged = {name: np.concatenate([part[name] for part in parts]).astype(np.float32) for name in parts[0]}
    return merged, len(parts)
