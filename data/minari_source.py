"""Local Minari datasets as a transition source.

A Minari episode of T steps holds observations [T+1, obs_dim], actions [T, A], rewards [T],
terminations [T] and truncations [T]; its transitions are (obs[t], actions[t], obs[t+1]).
They become: reward key 'default' with rewards/default = rewards[t] and
masks/default = 1 - terminations[t] (a truncated episode still bootstraps), and
terminals = 1 on each episode's last transition (terminated or truncated). Actions are mapped
from the action space's bounds onto [-1, 1] (data/action_bounds.py).

Reading a dataset never builds its env: metadata.json is parsed here as plain JSON, the spaces
come from its 'observation_space'/'action_space' (refused when absent, where minari would
gym.make the env spec, importing and calling whatever entry point it names), and of the env spec
only the 'id' string is kept, as the evaluation env's name.

When the dataset is OGBench play data (its name is an OGBench dataset family and its episodes
carry infos['qpos'], as pipeline/generate.py --format=minari writes them), the five task
rewards are relabelled from qpos exactly as for the .npz files.

The validation split of 'NS/NAME-vN' is the dataset 'NS/NAME-val-vN' when it exists.
Datasets are looked up under MINARI_DATASETS_PATH (default ~/.minari/datasets).
"""

import functools
import json
import os
import pathlib
import re
import shutil

import numpy as np

from data import action_bounds, files, ogbench_source, relabel, schema
from data.errors import DataError

DEFAULT_REWARD_KEY = schema.DEFAULT_REWARD_KEY


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

    os.makedirs(root, exist_ok=True)
    files.remove_stale_staging(root, ".minari")
    scratch = files.staging_path(root, ".minari")
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


def read_metadata(dataset_id: str, path: str) -> dict:
    """The dataset's metadata.json as plain JSON (nothing in it is imported or called)."""
    metadata_path = os.path.join(path, "metadata.json")
    try:
        with open(metadata_path) as handle:
            metadata = json.load(handle)
    except (OSError, ValueError) as error:
        raise DataError(f"minari:{dataset_id}: cannot read {metadata_path} ({type(error).__name__}: {error}); "
                        f"the dataset is incomplete or corrupt: recreate it.") from None
    if not isinstance(metadata, dict):
        raise DataError(f"minari:{dataset_id}: {metadata_path} holds {type(metadata).__name__}, expected a JSON "
                        f"object; the dataset is corrupt: recreate it.")
    return metadata


def _space(dataset_id: str, metadata_path: str, metadata: dict, field: str):
    """A space from its JSON in the metadata. Minari itself would build the dataset's env (importing
    and calling the entry point its env spec names) to find a space the metadata lacks; we refuse."""
    from minari.serialization import deserialize_space

    serialized = metadata.get(field)
    if not isinstance(serialized, str):
        raise DataError(
            f"minari:{dataset_id}: {metadata_path} has no field '{field}' (found {serialized!r}); spaces are read "
            f"only from the metadata, never by building the dataset's env: recreate the dataset with "
            f"minari.create_dataset_from_buffers(..., observation_space=..., action_space=...).")
    try:
        return deserialize_space(serialized)
    except Exception as error:  # NotImplementedError, KeyError, ValueError, ... for an unknown or bad space
        raise DataError(f"minari:{dataset_id}: {metadata_path} field '{field}' is not a space minari can read "
                        f"({type(error).__name__}: {error}); recreate the dataset.") from None


@functools.lru_cache(maxsize=4)
def _open(dataset_id: str, path: str, stamp):
    """MinariDataset over the storage, built from our own reading of metadata.json, so that
    nothing the metadata names is constructed: MinariStorage.read would gym.make the env spec
    when a space is missing, and gym.make imports and calls its entry point."""
    del stamp  # cache key only
    import minari
    from minari.dataset._storages import get_minari_storage, get_storage_keys

    metadata = read_metadata(dataset_id, path)
    metadata_path = os.path.join(path, "metadata.json")
    observation_space = _space(dataset_id, metadata_path, metadata, "observation_space")
    action_space = _space(dataset_id, metadata_path, metadata, "action_space")
    env_id(dataset_id, metadata)  # a bad id is named here, not as minari's EnvSpec parse error
    data_format = metadata.get("data_format")
    if data_format not in get_storage_keys():
        raise DataError(f"minari:{dataset_id}: {metadata_path} field 'data_format' is {data_format!r}, expected "
                        f"one of {get_storage_keys()}; recreate the dataset.")
    storage = get_minari_storage(data_format)(pathlib.Path(path), observation_space, action_space,
                                              jpeg_encoding=bool(metadata.get("jpeg_encoding", True)))
    return minari.MinariDataset(storage)


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
        return _open(dataset_id, path, (stat.st_size, stat.st_mtime_ns))
    except DataError:
        raise
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
    """{obs_dim, action_dim, episodes, steps, has_qpos, qpos_dim, path, action_low, action_high,
    eval_env, ref_min_score, ref_max_score} of a local dataset; DataError if unusable."""
    import gymnasium

    _parse(dataset_id)
    dataset = open_dataset(dataset_id)
    metadata = read_metadata(dataset_id, data_path(dataset_id))
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
        "action_low": np.asarray(dataset.action_space.low, np.float64).tolist(),
        "action_high": np.asarray(dataset.action_space.high, np.float64).tolist(),
        "eval_env": env_id(dataset_id, metadata),
        "ref_min_score": _score(metadata, "ref_min_score"),
        "ref_max_score": _score(metadata, "ref_max_score"),
    }


# A gymnasium id: '[namespace/]name[-vN]' of word characters, dots, dashes and colons (ale_py:...).
_ENV_ID = re.compile(r"^[A-Za-z0-9_.:\-]+(/[A-Za-z0-9_.:\-]+)?$")


def env_id(dataset_id: str, metadata: dict) -> str | None:
    """The id string of the dataset's env spec, or None; the entry point and kwargs beside it are
    never read (an evaluation env is made from a registered id only)."""
    spec = metadata.get("env_spec")
    if not isinstance(spec, str):
        return None
    try:
        found = json.loads(spec).get("id")
    except (ValueError, AttributeError):
        raise DataError(f"minari:{dataset_id}: metadata.json field 'env_spec' is not a JSON object; the dataset "
                        f"is corrupt: recreate it.") from None
    if found is None:
        return None
    if not isinstance(found, str) or not _ENV_ID.match(found):
        raise DataError(f"minari:{dataset_id}: metadata.json field 'env_spec' has id {found!r}, not a gymnasium "
                        f"env id; recreate the dataset or give preprocess.py --eval_env=GYM_ID.")
    return found


def _score(metadata: dict, field: str) -> float | None:
    value = metadata.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


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
                qpos_dim: int | None = None, bounds: dict | None = None):
    """Transitions of episodes [start, stop) as (columns, episodes, episode returns); see the
    module docstring.

    `targets` maps task reward keys to goals (data.envs.task_targets), used with qpos (of width
    `qpos_dim`, the env family's) when `kind` is set; 'default' always comes from the stored rewards.
    `bounds` (data.action_bounds) maps actions onto [-1, 1]; None: they must already lie there.
    """
    dataset = open_dataset(dataset_id, path)
    where = f"minari:{dataset_id}"
    obs_dim, action_dim = int(dataset.observation_space.shape[0]), int(dataset.action_space.shape[0])
    parts, returns = [], []
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
        terminations = np.asarray(episode.terminations, bool)
        ends = terminations | np.asarray(episode.truncations, bool)
        ends[-1:] = True  # a zero-step episode has no transition to end
        columns = {
            schema.OBSERVATIONS: observations[:-1],
            schema.ACTIONS: action_bounds.to_stored(episode_where, actions, bounds),
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
        returns.append(float(np.sum(episode.rewards, dtype=np.float64)))
    merged = {name: np.concatenate([part[name] for part in parts]).astype(np.float32) for name in parts[0]}
    return merged, len(parts), returns
