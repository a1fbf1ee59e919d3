"""The transition schema: the one definition of what a stored transition is.

A prepared dataset is a directory (written by pipeline/preprocess.py, read by data/reader.py):

    DIR/metadata.json                       # see `METADATA_FIELDS`
    DIR/train-00000-of-00010.tfrecord ...   # one tf.train.Example per transition
    DIR/val-00000-of-00001.tfrecord ...

Example features, all float32 and fixed length:

    observations       [obs_dim]     state s
    actions            [action_dim]  action a, already clipped to +-ACTION_CLIP
    next_observations  [obs_dim]     state s' reached by a
    terminals          []            1.0 on the last transition of an episode
    rewards/K, masks/K []            per reward key K ('task1'..'task5' or 'default');
                                     mask = 0 where the value of s' must not be bootstrapped

The Beam writer (data/tfrecord.py), the tf.data reader and the serving signatures all take
names and shapes from here. This module does not import TensorFlow at import time, so Beam
workers that only write records stay light.
"""

SCHEMA_VERSION = 1

OBSERVATIONS = "observations"
ACTIONS = "actions"
NEXT_OBSERVATIONS = "next_observations"
TERMINALS = "terminals"
REWARDS = "rewards"
MASKS = "masks"

# The reward key of every source's own rewards (Minari, npz, TF-Agents): the reward the data was
# recorded with, as opposed to OGBench's relabelled task rewards 'task1'..'task5'.
DEFAULT_REWARD_KEY = "default"

SPLITS = ("train", "val")
METADATA_FILE = "metadata.json"
SHARD_SUFFIX = ".tfrecord"

# SPEC 6: dataset actions are clipped to +-(1 - 1e-5). The clip happens once, in
# pipeline/preprocess.py, so the TFRecords hold exactly what the learner sees. An action
# further than ACTION_TOLERANCE outside [-1, 1] is not rounding noise but bad data: an error.
ACTION_CLIP = 1.0 - 1e-5
ACTION_TOLERANCE = 1e-4

# The keys of metadata.json, for readers of the files.
METADATA_FIELDS = {
    "schema_version": "int, SCHEMA_VERSION of the writer",
    "source": "the --input string the dataset was made from",
    "source_files": "split -> input files (or Minari dataset ids)",
    "source_sha256": "input file -> sha256 of its bytes",
    "source_checksum": "sha256 over the sorted (file, sha256) pairs: one value to compare",
    "env": "OGBench dataset family, e.g. 'cube-single-play' (null for a generic Minari source)",
    "env_id": "OGBench dataset name or Minari dataset id",
    "obs_dim": "int",
    "action_dim": "int",
    "reward_keys": "list of K with rewards/K and masks/K features",
    "task_targets": "reward key -> the goal the rewards were computed from",
    "eval_env_names": "reward key -> ogbench.make_env_and_datasets name of that task's env",
    "action_clip": "actions were clipped to +-action_clip when written",
    "features": "feature name -> shape",
    "counts": "split -> number of transitions",
    "episodes": "split -> number of episodes",
    "statistics": "split -> feature -> {mean, std, min, max} per dimension",
    "shards": "split -> [{file, count, bytes}] in read order",
    "action_bounds": "{low, high}: the env-unit Box the stored actions were mapped from onto [-1, 1] "
                     "(a = 2 (x - low) / (high - low) - 1, then clipped); null: actions were already in [-1, 1]",
    "eval_env": "gymnasium id of the env the data comes from (a Minari env spec's id, or --eval_env), or null",
    "ref_min_score": "float or null: the source's reference score of a random policy (D4RL normalised score 0)",
    "ref_max_score": "float or null: the source's reference score of an expert (D4RL normalised score 100)",
    "dataset_returns": "split -> {mean, std, min, max, episodes} of undiscounted episode returns of the "
                       "source's own rewards (every recorded reward; null for OGBench play data)",
}


def reward_key(task) -> str:
    """The reward key for `task`: an int n (or '3') means 'task{n}', any other string is a key."""
    if isinstance(task, bool):
        raise ValueError(f"task must be an int or a reward key string, got {task!r}")
    if isinstance(task, int):
        return f"task{task}"
    text = str(task)
    return f"task{text}" if text.isdigit() else text


def reward_feature(key: str) -> str:
    return f"{REWARDS}/{key}"


def mask_feature(key: str) -> str:
    return f"{MASKS}/{key}"


def feature_shapes(obs_dim: int, action_dim: int, reward_keys) -> dict:
    """Feature name -> shape tuple, in the sorted order the records store them."""
    shapes = {
        OBSERVATIONS: (int(obs_dim),),
        ACTIONS: (int(action_dim),),
        NEXT_OBSERVATIONS: (int(obs_dim),),
        TERMINALS: (),
    }
    for key in reward_keys:
        shapes[reward_feature(key)] = ()
        shapes[mask_feature(key)] = ()
    return dict(sorted(shapes.items()))


def batch_features(reward_key_: str) -> dict:
    """Batch key the reader yields -> stored feature name, for one reward key."""
    return {
        OBSERVATIONS: OBSERVATIONS,
        ACTIONS: ACTIONS,
        NEXT_OBSERVATIONS: NEXT_OBSERVATIONS,
        REWARDS: reward_feature(reward_key_),
        MASKS: mask_feature(reward_key_),
        TERMINALS: TERMINALS,
    }


def parse_spec(shapes: dict) -> dict:
    """tf.io.parse_example spec for the given {feature: shape} (imports TensorFlow)."""
    import tensorflow as tf

    return {name: tf.io.FixedLenFeature(list(shape), tf.float32) for name, shape in shapes.items()}


def shard_file_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"
