"""Trajectory files written by TF-Agents, read as this project's transitions.

`python pipeline/preprocess.py --input=tf_agents:PATH --output=DIR` converts them (data/sources.py
opens them with `describe` and reads them with `transitions`). PATH is a trajectory file, a glob
of them, or a directory (each file with its `.spec` beside it). A file whose name before its
extension ends in `-val` (`traj-val.tfrecord`) goes to the validation split, the others to
train; so `tf_agents:DIR/traj.tfrecord` takes `DIR/traj-val.tfrecord` as validation data when
that exists. Rewards are stored under the reward key 'default'.

The format. TF-Agents' `TFRecordObserver(PATH, trajectory_spec)` writes one `tf.train.Example`
per driver step to PATH, one feature per leaf of the `Trajectory` named by its joined path
(`observation`, `action`, `reward`, `discount`, `step_type`, `next_step_type`, `policy_info/...`),
and the nested spec, a `StructuredValue` proto in a one-record TFRecord, to `PATH.spec`. float32
leaves are FloatLists, int64 leaves Int64Lists, every other dtype raw little-endian bytes
(tf_agents/utils/example_encoding.py).

A record is the step (s_t, a_t) with the reward and discount that followed it; s_{t+1} is the
observation of the next record. A record whose `step_type` is LAST is an episode boundary (its
observation is the final s_{t+1}, its action meaningless) and is no transition. So, for each record
i that is not a boundary and is followed by its continuation:

    observations[i] = observation[i]      actions[i] = action[i]
    next_observations[i] = observation[i + 1]
    rewards[i] = reward[i]                masks[i] = discount[i]   (0 on termination, 1 otherwise,
                                                                     also on a time-limit truncation)
    terminals[i] = next_step_type[i] == LAST   (the episode ends here: termination or truncation)

as data/minari_source.py defines them for Minari episodes. A record with no continuation (the
file's last, or one after which recording restarted at a reset) has no s_{t+1} and is dropped;
`TrajectoryFile.dropped` counts them. Actions are clipped to +-schema.ACTION_CLIP like every
source's.

Only TensorFlow is needed (the spec proto ships with it), so the core environment converts these
files without tf_agents installed: this is a data source like data/ogbench_source.py, not part of
the optional interop/tf_agents layer.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.protobuf import struct_pb2

from data import ogbench_source, schema
from data.errors import DataError

SPEC_SUFFIX = ".spec"
# tf_agents.trajectories.time_step.StepType
FIRST, MID, LAST = 0, 1, 2
STEP_TYPE_NAMES = {FIRST: "FIRST", MID: "MID", LAST: "LAST"}
# The Trajectory leaves a transition is made of; policy_info and any extra leaf are ignored.
TRANSITION_FIELDS = ("step_type", "next_step_type", "observation", "action", "reward", "discount")
# How far a bounded action spec may pass +-1 (float32 rounding) before it is not SORL's range.
BOUND_TOLERANCE = 1e-6
READ_BATCH = 4096  # records parsed per tf.io.parse_example call
REWARD_KEY = schema.DEFAULT_REWARD_KEY  # TF-Agents records one reward: stored as rewards/default, masks/default
VALIDATION_SUFFIX = "-val"


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One tensor of a trajectory spec, named as TF-Agents names its Example feature."""

    path: str  # joined path: "observation", "policy_info/log_probability", ...
    shape: tuple  # of one step, without batch dimension
    dtype: tf.DType
    minimum: np.ndarray | None = None  # bounds of a BoundedTensorSpec, else None
    maximum: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class TrajectoryFile:
    """The transitions of one TF-Agents trajectory file (float32 arrays, N rows)."""

    path: str
    observations: np.ndarray  # [N, obs_dim]
    actions: np.ndarray  # [N, action_dim]
    next_observations: np.ndarray  # [N, obs_dim]
    rewards: np.ndarray  # [N]
    masks: np.ndarray  # [N], TF-Agents' discount
    terminals: np.ndarray  # [N], 1.0 on the last transition of an episode
    episode_ids: np.ndarray  # [N] int64, 0-based episode number within the file
    dropped: int  # records without a following observation

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]


def find_trajectory_files(pattern: str) -> list[str]:
    """Trajectory files named by `pattern`: a file, a glob, or a directory (every file in it that
    has a `.spec` beside it). Sorted, so the conversion order is fixed."""
    gfile = tf.io.gfile  # local paths and any filesystem TensorFlow reads (gs://, ...)
    if gfile.isdir(pattern):
        candidates = [path for path in gfile.glob(os.path.join(pattern, "*"))
                      if gfile.exists(path + SPEC_SUFFIX)]
    else:
        candidates = gfile.glob(pattern)
    files = sorted(path for path in candidates
                   if not path.endswith(SPEC_SUFFIX) and not gfile.isdir(path))
    if not files:
        raise DataError(
            f"{pattern}: no TF-Agents trajectory file there; pass the file TFRecordObserver "
            f"wrote (with its {SPEC_SUFFIX} beside it), a glob of such files, or their directory"
        )
    return files


def read_spec(spec_path: str) -> dict[str, LeafSpec]:
    """Reads a TF-Agents `.spec` file into its leaves, keyed by joined path."""
    if not tf.io.gfile.exists(spec_path):
        raise DataError(
            f"{spec_path}: spec file not found; TFRecordObserver writes PATH{SPEC_SUFFIX} beside "
            f"PATH: copy it along with the trajectory file"
        )
    try:
        record = next(iter(tf.data.TFRecordDataset(spec_path).take(1))).numpy()
        proto = struct_pb2.StructuredValue.FromString(record)
    except (StopIteration, tf.errors.OpError, protobuf_message.DecodeError) as error:
        raise DataError(
            f"{spec_path}: not a TF-Agents spec file (a TFRecord holding a StructuredValue "
            f"proto): {type(error).__name__}; rewrite it with TFRecordObserver"
        ) from error
    leaves = {}
    _collect_leaves(proto, (), leaves, spec_path)
    return leaves


def _collect_leaves(value, path, leaves, spec_path):
    """Walks a StructuredValue like tf.nest does (dict keys sorted) and records each tensor spec."""
    kind = value.WhichOneof("kind")
    joined = "/".join(path)
    if kind == "named_tuple_value":
        for pair in value.named_tuple_value.values:
            _collect_leaves(pair.value, path + (pair.key,), leaves, spec_path)
    elif kind == "dict_value":
        for key in sorted(value.dict_value.fields):
            _collect_leaves(value.dict_value.fields[key], path + (key,), leaves, spec_path)
    elif kind in ("tuple_value", "list_value"):
        for index, item in enumerate(getattr(value, kind).values):
            _collect_leaves(item, path + (str(index),), leaves, spec_path)
    elif kind in ("tensor_spec_value", "bounded_tensor_spec_value"):
        spec = getattr(value, kind)
        shape = tf.TensorShape(spec.shape)
        if not shape.is_fully_defined():
            raise DataError(
                f"{spec_path}: field {joined} has shape {shape} with unknown dimensions; "
                f"TF-Agents' encoder writes fixed shapes only: is this the file's own spec?"
            )
        bounded = kind == "bounded_tensor_spec_value"
        leaves[joined] = LeafSpec(
            path=joined,
            shape=tuple(shape.as_list()),
            dtype=tf.dtypes.as_dtype(spec.dtype),
            minimum=tf.make_ndarray(spec.minimum) if bounded else None,
            maximum=tf.make_ndarray(spec.maximum) if bounded else None,
        )
    elif kind == "none_value":
        pass  # an empty slot (e.g. no policy info) has no feature
    else:
        raise DataError(
            f"{spec_path}: field {joined or '(root)'} is a {kind}, which TF-Agents' trajectory "
            f"encoder never writes; is this a TFRecordObserver .spec file?"
        )


def check_transition_spec(leaves: dict[str, LeafSpec], spec_path: str) -> tuple[int, int]:
    """Checks that a trajectory spec describes continuous-action transitions.

    Returns (obs_dim, action_dim). Raises DataError naming the field, what it is, and what to do.
    """
    for name in TRANSITION_FIELDS:
        nested = sorted(path for path in leaves if path.startswith(name + "/"))
        if nested:
            raise DataError(
                f"{spec_path}: field {name} is a nest ({', '.join(nested)}); SORL needs one flat "
                f"vector: flatten it (e.g. tf_agents' FlattenObservationsWrapper) before recording"
            )
        if name not in leaves:
            raise DataError(
                f"{spec_path}: no field {name} (fields: {', '.join(sorted(leaves)) or 'none'}); a "
                f"trajectory needs {', '.join(TRANSITION_FIELDS)}: record with "
                f"TFRecordObserver(path, agent.collect_data_spec) or a Trajectory spec"
            )
    for name in ("step_type", "next_step_type"):
        leaf = leaves[name]
        if leaf.shape != () or not leaf.dtype.is_integer:
            raise DataError(
                f"{spec_path}: field {name} is {_describe(leaf)}, expected a scalar integer "
                f"step type; is this a single-environment Trajectory spec?"
            )
    for name in ("reward", "discount"):
        leaf = leaves[name]
        if leaf.shape != () or not leaf.dtype.is_floating:
            raise DataError(
                f"{spec_path}: field {name} is {_describe(leaf)}, expected a scalar float; SORL "
                f"takes one reward per step (record each objective's reward in its own file)"
            )
    observation = leaves["observation"]
    if len(observation.shape) != 1 or not (
        observation.dtype.is_floating or observation.dtype.is_integer
    ):
        raise DataError(
            f"{spec_path}: field observation is {_describe(observation)}, expected a vector "
            f"[obs_dim] of numbers; flatten images or nests into one vector before recording"
        )
    action = leaves["action"]
    if len(action.shape) != 1 or not action.dtype.is_floating:
        raise DataError(
            f"{spec_path}: field action is {_describe(action)}, expected a float vector "
            f"[action_dim]: SORL is for continuous actions (discrete actions are not supported)"
        )
    if action.minimum is not None and (
        np.min(action.minimum) < -1 - BOUND_TOLERANCE or np.max(action.maximum) > 1 + BOUND_TOLERANCE
    ):
        raise DataError(
            f"{spec_path}: field action is bounded to [{np.min(action.minimum)}, "
            f"{np.max(action.maximum)}], but SORL's policy acts in [-1, 1]: rescale the "
            f"environment's actions to [-1, 1] (then record again, or rescale the data)"
        )
    return observation.shape[0], action.shape[0]


def _describe(leaf: LeafSpec) -> str:
    return f"shape {list(leaf.shape)} dtype {leaf.dtype.name}"


def _feature_parser(leaf: LeafSpec):
    """(FixedLenFeature, decode) for one leaf, as TF-Agents' example encoder wrote it."""
    if leaf.dtype in (tf.float32, tf.int64):
        return tf.io.FixedLenFeature(leaf.shape, leaf.dtype), lambda batch: batch
    # Other dtypes are raw little-endian bytes, one string per record.
    return tf.io.FixedLenFeature([], tf.string), lambda batch: tf.reshape(
        tf.io.decode_raw(batch, leaf.dtype, little_endian=True), (-1,) + leaf.shape
    )


def read_steps(path: str, leaves: dict[str, LeafSpec]) -> dict[str, np.ndarray]:
    """Reads the named leaves of every record of a trajectory file: {path: [num_records, ...]}."""
    parsers = {name: _feature_parser(leaf) for name, leaf in leaves.items()}
    features = {name: feature for name, (feature, _) in parsers.items()}

    def parse(serialized):
        raw = tf.io.parse_example(serialized, features)
        return {name: decode(raw[name]) for name, (_, decode) in parsers.items()}

    columns = {name: [] for name in leaves}
    dataset = tf.data.TFRecordDataset(path).batch(READ_BATCH).map(parse)
    try:
        for batch in dataset:
            for name, values in batch.items():
                columns[name].append(values.numpy())
    except tf.errors.OpError as error:
        raise DataError(
            f"{path}: cannot read its records with {path}{SPEC_SUFFIX} "
            f"({error.message.splitlines()[0]}); the file is damaged or the spec is not its own"
        ) from error
    return {
        name: np.concatenate(parts) if parts else np.zeros((0,) + leaves[name].shape,
                                                           leaves[name].dtype.as_numpy_dtype)
        for name, parts in columns.items()
    }


def transition_rows(step_type: np.ndarray, next_step_type: np.ndarray, path: str):
    """Which records are transitions, from the step types alone.

    Returns (rows, episode_ids, dropped): the indices of the records that are transitions (each
    continued by record row + 1, which holds its s'), their 0-based episode numbers in the file,
    and the number of non-boundary records left without their s'.
    """
    step_type, next_step_type = step_type.astype(np.int64), next_step_type.astype(np.int64)
    if step_type.size == 0:
        raise DataError(f"{path}: the file holds no records; was the observer closed before "
                        f"the driver ran?")
    # Record i is continued by record i + 1 when i + 1 is the step that i announced.
    continued = step_type[1:] == next_step_type[:-1]
    # A reset mid-episode (recording restarted) leaves record i without its s'.
    restarted = ~continued & (step_type[1:] == FIRST) & (step_type[:-1] != LAST)
    broken = np.flatnonzero(~continued & ~restarted)
    if broken.size:
        i = int(broken[0])
        raise DataError(
            f"{path}: record {i} announces a {_step_name(next_step_type[i])} step but record "
            f"{i + 1} is {_step_name(step_type[i + 1])}: not one unbroken stream of steps; "
            f"record each environment of a batch into its own file"
        )
    continued = np.append(continued, False)  # the last record has no successor
    rows = np.flatnonzero(continued & (step_type != LAST))
    # Episodes start after every boundary and at every restart.
    episode_starts = np.append(False, (step_type[:-1] == LAST) | restarted)
    episode_ids = np.cumsum(episode_starts)[rows].astype(np.int64)
    dropped = int(np.sum(~continued & (step_type != LAST)))
    return rows, episode_ids, dropped


def steps_to_transitions(steps: dict[str, np.ndarray], path: str) -> TrajectoryFile:
    """Pairs each non-boundary record with the observation of the record that continues it."""
    rows, episode_ids, dropped = transition_rows(steps["step_type"], steps["next_step_type"], path)
    observation = steps["observation"].astype(np.float32)
    return TrajectoryFile(
        path=path,
        observations=observation[rows],
        actions=steps["action"].astype(np.float32)[rows],
        next_observations=observation[rows + 1],
        rewards=steps["reward"].astype(np.float32)[rows],
        masks=steps["discount"].astype(np.float32)[rows],
        terminals=(steps["next_step_type"][rows] == LAST).astype(np.float32),
        episode_ids=episode_ids,
        dropped=dropped,
    )


def count_transitions(path: str, leaves: dict[str, LeafSpec]) -> int:
    """The number of transitions in a file, reading only its step types."""
    step_types = read_steps(path, {name: leaves[name] for name in ("step_type", "next_step_type")})
    return len(transition_rows(step_types["step_type"], step_types["next_step_type"], path)[0])


def _step_name(step_type) -> str:
    return STEP_TYPE_NAMES.get(int(step_type), f"unknown ({int(step_type)})")


def read_trajectory_file(path: str) -> TrajectoryFile:
    """Reads one TF-Agents trajectory file (and its `.spec`) into transitions; values checked."""
    spec_path = path + SPEC_SUFFIX
    leaves = read_spec(spec_path)
    check_transition_spec(leaves, spec_path)
    steps = read_steps(path, {name: leaves[name] for name in TRANSITION_FIELDS})
    transitions = steps_to_transitions(steps, path)
    for field in ("observations", "actions", "next_observations", "rewards", "masks"):
        ogbench_source.check_finite(path, field, getattr(transitions, field), 0)
    ogbench_source.check_actions(path, transitions.actions, 0)
    return transitions


def to_columns(transitions: TrajectoryFile) -> dict:
    """{feature name (data.schema): float32 array} with reward key 'default'."""
    return {
        schema.OBSERVATIONS: transitions.observations,
        schema.ACTIONS: np.clip(transitions.actions, -schema.ACTION_CLIP, schema.ACTION_CLIP),
        schema.NEXT_OBSERVATIONS: transitions.next_observations,
        schema.TERMINALS: transitions.terminals,
        schema.reward_feature(REWARD_KEY): transitions.rewards,
        schema.mask_feature(REWARD_KEY): transitions.masks,
    }


# What data/sources.py needs for 'tf_agents:PATH': describe the files, read ranges of them.


def is_validation_file(path: str) -> bool:
    """True for a file named like 'traj-val.tfrecord' or 'traj-val'."""
    return os.path.basename(path).split(".")[0].endswith(VALIDATION_SUFFIX)


def validation_path_for(path: str) -> str:
    """'DIR/traj.tfrecord' -> 'DIR/traj-val.tfrecord' (the validation file beside a file)."""
    stem, extension = os.path.splitext(path)
    return stem + VALIDATION_SUFFIX + extension


def split_files(pattern: str) -> dict:
    """{'train': files, 'val': files (if any)} named by `pattern` (see the module docstring)."""
    files = find_trajectory_files(pattern)
    if files == [pattern] and tf.io.gfile.exists(validation_path_for(pattern)):
        files.append(validation_path_for(pattern))
    splits = {
        "train": [path for path in files if not is_validation_file(path)],
        "val": [path for path in files if is_validation_file(path)],
    }
    if not splits["train"]:
        raise DataError(
            f"tf_agents:{pattern}: only validation files ({', '.join(splits['val'])}); name the "
            f"training files without '{VALIDATION_SUFFIX}' before the extension"
        )
    return {split: tuple(paths) for split, paths in splits.items() if paths}


def describe(pattern: str) -> dict:
    """Checks the trajectory files named by `pattern` (an absolute path or URL) and describes them:
    {'inputs': split -> file paths, 'obs_dim', 'action_dim', 'transitions': split -> count}.
    Reads every file's step types once, to count its transitions exactly."""
    inputs = split_files(pattern)
    dims, transitions = {}, {}
    for paths in inputs.values():
        for path in paths:
            spec_path = path + SPEC_SUFFIX
            leaves = read_spec(spec_path)
            dims[path] = check_transition_spec(leaves, spec_path)
            transitions[path] = count_transitions(path, leaves)
    first = inputs["train"][0]
    for path, path_dims in dims.items():
        if path_dims != dims[first]:
            raise DataError(
                f"{path}: observation/action dims {path_dims[0]}/{path_dims[1]} differ from "
                f"{first}'s {dims[first][0]}/{dims[first][1]}; convert each environment's files apart"
            )
    return {
        "inputs": inputs, "obs_dim": dims[first][0], "action_dim": dims[first][1],
        "transitions": {split: sum(transitions[path] for path in paths) for split, paths in inputs.items()},
    }


def transitions(paths) -> tuple[dict, int]:
    """(columns, episodes) of the trajectory files `paths`, in order."""
    parts = [read_trajectory_file(path) for path in paths]
    columns = [to_columns(part) for part in parts]
    merged = {name: np.concatenate([part[name] for part in columns]).astype(np.float32)
              for name in columns[0]}
    return merged, sum(len(np.unique(part.episode_ids)) for part in parts)


def source_files(paths) -> list:
    """The trajectory files `paths` and their .spec files, for the dataset's checksums."""
    return sorted(list(paths) + [path + SPEC_SUFFIX for path in paths])
