"""Input sources for pipeline/preprocess.py: 'ogbench:PATH.npz', 'minari:DATASET_ID',
'npz:PATH.npz' (D4RL layout; data/npz_source.py) or 'tf_agents:PATH' (trajectory files written by
TF-Agents; data/tf_agents_source.py).

`open_source` checks a source in the driver (files exist, fields, shapes and lengths agree,
env and tasks known, action bounds finite) and returns a picklable `Source`; Beam workers call
`Source.read_chunk` on row or episode ranges, which checks values (finite, actions in range),
maps actions onto [-1, 1] (data/action_bounds.py) and returns transitions as {feature name
(data.schema): float32 array} with the chunk's episode count and episode returns.
"""

import dataclasses
import hashlib
import math
import os

import numpy as np

from data import action_bounds, envs, minari_source, npz_source, ogbench_source, schema
from data.errors import DataError

ROWS_PER_SHARD = 100_000  # default shard size: ~60 MB of cube-single records

KINDS = ("ogbench", "minari", "npz", "tf_agents")


@dataclasses.dataclass(frozen=True)
class Source:
    """A checked input: what it holds and how to read ranges of it."""

    spec: str  # the --input string, with the path made absolute
    kind: str  # one of KINDS
    env: str | None  # OGBench dataset family, or None for a generic Minari dataset
    env_id: str  # OGBench dataset name or Minari dataset id
    reward_kind: str | None  # data.relabel kind used for task rewards, None if no task rewards
    obs_dim: int
    action_dim: int
    reward_keys: tuple  # e.g. ('task1', ..., 'task5') or ('default',)
    targets: dict  # task reward key -> goal (data.envs.task_targets)
    inputs: dict  # split -> file path (ogbench) or dataset id (minari)
    sizes: dict  # split -> rows (ogbench) or episodes (minari) to divide among shards
    transitions_hint: dict  # split -> transitions, as far as the driver can tell cheaply
    data_paths: dict = dataclasses.field(default_factory=dict)  # minari: split -> data directory
    action_bounds: dict | None = None  # {low, high} actions are mapped from (data.action_bounds); None: identity
    eval_env: str | None = None  # gymnasium id to evaluate in (metadata 'eval_env')
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    npz_keys: tuple = ()  # npz: the fields the files hold

    def read(self, split: str, start: int, stop: int) -> tuple[dict, int]:
        """(columns, episodes) for rows/episodes [start, stop) of `split`."""
        columns, episodes, _ = self.read_chunk(split, start, stop)
        return columns, episodes

    def read_chunk(self, split: str, start: int, stop: int) -> tuple:
        """(columns, episodes, episode returns or None) for rows/episodes [start, stop) of `split`.
        Returns are of the source's own rewards; OGBench play data has none (None)."""
        if self.kind == "ogbench":
            columns, episodes = ogbench_source.transitions(self.inputs[split], self.reward_kind, self.targets,
                                                           start, stop)
            return columns, episodes, None
        if self.kind == "npz":
            return npz_source.transitions(self.inputs[split], self.npz_keys, start, stop, self.action_bounds)
        if self.kind == "tf_agents":
            from data import tf_agents_source  # imports TensorFlow: only for this kind

            columns, episodes = tf_agents_source.transitions(self.inputs[split][start:stop])
            return columns, episodes, _returns_of_written(columns)
        qpos_dim = envs.resolve_env(self.env).qpos_dim if self.env else None
        return minari_source.transitions(self.inputs[split], self.data_paths[split], self.reward_kind,
                                         self.targets, start, stop, qpos_dim, self.action_bounds)

    def files(self) -> list:
        """Every input file, for checksums."""
        if self.kind in ("ogbench", "npz"):
            return [self.inputs[split] for split in schema.SPLITS if split in self.inputs]
        if self.kind == "tf_agents":
            from data import tf_agents_source  # imports TensorFlow: only for this kind

            return tf_agents_source.source_files([path for split in schema.SPLITS
                                                  for path in self.inputs.get(split, ())])
        found = []
        for split in schema.SPLITS:
            if split in self.data_paths:
                root = os.path.dirname(self.data_paths[split])
                for parent, _, names in os.walk(root):
                    found.extend(os.path.join(parent, name) for name in names)
        return sorted(found)

    def input_roots(self) -> list:
        """The input files (ogbench, tf_agents) or dataset directories (minari) an output must
        neither replace nor lie inside."""
        if self.kind == "minari":
            return [os.path.dirname(path) for path in self.data_paths.values()]
        if self.kind in ("ogbench", "npz"):
            return list(self.inputs.values())
        return [path for paths in self.inputs.values() for path in paths]

    def feature_shapes(self) -> dict:
        return schema.feature_shapes(self.obs_dim, self.action_dim, self.reward_keys)


def _returns_of_written(columns: dict) -> list:
    """Episode returns summed over the transitions written (episodes end where terminals is 1),
    for sources that hand over transitions rather than episodes (TF-Agents)."""
    rewards = np.asarray(columns[schema.reward_feature(schema.DEFAULT_REWARD_KEY)], np.float64)
    ends = np.flatnonzero(np.asarray(columns[schema.TERMINALS]) > 0.5) + 1
    return [float(part.sum()) for part in np.split(rewards, ends) if len(part)]


def _task_targets(family: envs.EnvFamily) -> dict:
    return {schema.reward_key(task): envs.task_targets(family, task) for task in range(1, family.num_tasks + 1)}


def _open_ogbench(path: str, env: str | None, options: dict) -> Source:
    if "://" not in path:
        path = os.path.abspath(path)
    if not path.endswith(".npz"):
        raise DataError(f"ogbench:{path}: expected an OGBench .npz file (NAME.npz with NAME-val.npz beside it).")
    _refuse_options(f"ogbench:{path}", options, "OGBench actions are already in [-1, 1] and each task names "
                                                "its evaluation env", ("eval_env", "action_low", "action_high"))
    family = envs.resolve_env(env) if env else envs.family_from_dataset_file(path)
    needed = list(ogbench_source.REQUIRED_KEYS) + ["qpos"] + (["button_states"] if family.kind == "scene" else [])
    inputs = {"train": path, "val": ogbench_source.val_path_for(path)}
    sizes, transitions, layout = {}, {}, None
    for split, split_path in inputs.items():
        ogbench_source.require_file(split_path, f"{split} split of ogbench:{path}")
        split_layout = ogbench_source.check_layout(split_path, ogbench_source.array_headers(split_path), needed)
        dims = (split_layout["obs_dim"], split_layout["action_dim"])
        if layout and dims != (layout["obs_dim"], layout["action_dim"]):
            raise DataError(
                f"{split_path}: observations/actions have dims {split_layout['obs_dim']}/"
                f"{split_layout['action_dim']} but {inputs['train']} has {layout['obs_dim']}/"
                f"{layout['action_dim']}; both splits must come from the same env."
            )
        layout = layout or split_layout
        envs.check_data_fits(family, split_path, split_layout["obs_dim"], split_layout["action_dim"],
                             split_layout["qpos_dim"])
        terminals = ogbench_source.load_arrays(split_path, ["terminals"])["terminals"]
        ogbench_source.check_terminals(split_path, terminals)
        sizes[split] = split_layout["rows"]
        transitions[split] = int(len(terminals) - np.count_nonzero(terminals))
        if not transitions[split]:
            raise DataError(
                f"{split_path}: field 'terminals' is 1 on all {len(terminals)} rows: every episode is a "
                f"single row, so the {split} split holds no transitions; regenerate it with longer episodes."
            )
    return Source(
        spec=f"ogbench:{path}", kind="ogbench", env=family.name, env_id=family.dataset_name,
        reward_kind=family.kind, obs_dim=layout["obs_dim"], action_dim=layout["action_dim"],
        reward_keys=tuple(schema.reward_key(t) for t in range(1, family.num_tasks + 1)),
        targets=_task_targets(family), inputs=inputs, sizes=sizes, transitions_hint=transitions,
    )


def _open_minari(dataset_id: str, env: str | None, options: dict) -> Source:
    splits = {"train": minari_source.describe(dataset_id)}
    val_id = minari_source.val_dataset_id(dataset_id)
    if minari_source.exists(val_id):
        splits["val"] = minari_source.describe(val_id)
        dims = [(split["obs_dim"], split["action_dim"]) for split in splits.values()]
        if dims[0] != dims[1]:
            raise DataError(f"minari:{val_id}: observation/action dims {dims[1]} differ from {dims[0]} of "
                            f"minari:{dataset_id}; both splits must come from the same env.")
    train = splits["train"]
    inputs = {"train": dataset_id, **({"val": val_id} if "val" in splits else {})}

    family = None
    if env:
        family = envs.resolve_env(env)
        if not train["has_qpos"]:
            raise DataError(
                f"minari:{dataset_id}: --env={env} asks for OGBench task rewards, but the episodes "
                f"have no infos['qpos'] to compute them from; drop --env to use the stored rewards."
            )
    elif train["has_qpos"]:
        try:
            family = envs.resolve_env(minari_source.dataset_name(dataset_id))
        except DataError:
            family = None
    if family:
        for split, info in splits.items():
            envs.check_data_fits(family, f"minari:{inputs[split]}", info["obs_dim"], info["action_dim"],
                                 info["qpos_dim"])
    targets = _task_targets(family) if family else {}
    if family:  # OGBench play data: actions in [-1, 1] already, evaluated in each task's env
        _refuse_options(f"minari:{dataset_id}", options, "OGBench play data keeps its [-1, 1] actions and task envs",
                        ("eval_env", "action_low", "action_high"))
        bounds, eval_env = None, None
    else:
        eval_env = _eval_env(options) or train["eval_env"]
        bounds = _action_bounds(f"minari:{dataset_id} field 'action_space'", train["action_dim"], options,
                                (train["action_low"], train["action_high"]))
    return Source(
        spec=f"minari:{dataset_id}", kind="minari", env=family.name if family else None, env_id=dataset_id,
        reward_kind=family.kind if family else None, obs_dim=train["obs_dim"], action_dim=train["action_dim"],
        reward_keys=tuple(targets) + (minari_source.DEFAULT_REWARD_KEY,), targets=targets, inputs=inputs,
        sizes={split: info["episodes"] for split, info in splits.items()},
        transitions_hint={split: info["steps"] for split, info in splits.items()},
        data_paths={split: info["path"] for split, info in splits.items()},
        action_bounds=bounds, eval_env=eval_env,
        ref_min_score=None if family else train["ref_min_score"],
        ref_max_score=None if family else train["ref_max_score"],
    )


def _open_npz(path: str, env: str | None, options: dict) -> Source:
    """A D4RL-style file (data/npz_source.py); NAME-val.npz beside it is the val split if present."""
    if env:
        raise DataError(f"--env={env}: an npz:PATH file carries its own rewards (stored under "
                        f"'{schema.DEFAULT_REWARD_KEY}'); there are no task rewards to relabel: drop --env.")
    if "://" not in path:
        path = os.path.abspath(path)
    if not path.endswith(".npz"):
        raise DataError(f"npz:{path}: expected a .npz file in the D4RL layout (NAME.npz, NAME-val.npz beside it "
                        f"for validation).")
    npz_source.require_file(path, "npz:PATH training file")
    inputs = {"train": path}
    val_path = ogbench_source.val_path_for(path)
    if ogbench_source._exists(val_path):
        inputs["val"] = val_path
    layouts = {split: npz_source.check_layout(split_path) for split, split_path in inputs.items()}
    train = layouts["train"]
    for split, layout in layouts.items():
        if (layout["obs_dim"], layout["action_dim"]) != (train["obs_dim"], train["action_dim"]):
            raise DataError(f"{inputs[split]}: observations/actions have dims {layout['obs_dim']}/"
                            f"{layout['action_dim']} but {path} has {train['obs_dim']}/{train['action_dim']}; "
                            f"both splits must come from the same env.")
        if layout["keys"] != train["keys"]:
            raise DataError(f"{inputs[split]}: has fields {list(layout['keys'])} but {path} has "
                            f"{list(train['keys'])}; write both splits the same way.")
    counts = {split: npz_source.count_transitions(inputs[split], train["keys"]) for split in inputs}
    return Source(
        spec=f"npz:{path}", kind="npz", env=None, env_id=path, reward_kind=None,
        obs_dim=train["obs_dim"], action_dim=train["action_dim"], reward_keys=(schema.DEFAULT_REWARD_KEY,),
        targets={}, inputs=inputs, sizes={split: episodes for split, (episodes, _) in counts.items()},
        transitions_hint={split: transitions for split, (_, transitions) in counts.items()},
        action_bounds=_action_bounds(f"npz:{path}", train["action_dim"], options, None),
        eval_env=_eval_env(options), npz_keys=train["keys"],
    )


def _refuse_options(where: str, options: dict, why: str, names) -> None:
    for name in names:
        if options.get(name) is not None:
            raise DataError(f"--{name}={options[name]}: not for {where} ({why}); drop --{name}.")


def _eval_env(options: dict) -> str | None:
    """--eval_env, checked to be a registered gymnasium id (nothing else is ever made an env)."""
    env_id = options.get("eval_env")
    if env_id is None:
        return None
    import gymnasium

    if env_id not in gymnasium.envs.registry:
        raise DataError(f"--eval_env={env_id}: not a registered gymnasium env id (e.g. Pendulum-v1, Hopper-v5); "
                        f"use the id the data was recorded in.")
    return env_id


def _action_bounds(where: str, action_dim: int, options: dict, dataset_bounds) -> dict | None:
    """Bounds to map actions from: --action_low/--action_high, else the dataset's own action space,
    else a registered --eval_env's action space, else None (actions must already lie in [-1, 1])."""
    given = action_bounds.from_flags(options.get("action_low"), options.get("action_high"), action_dim)
    if given:
        return given
    if dataset_bounds is not None:
        return action_bounds.checked(where, *dataset_bounds, action_dim)
    if options.get("eval_env"):
        return action_bounds.from_registered_env(_eval_env(options), action_dim)
    return None


def _open_tf_agents(pattern: str, env: str | None, options: dict) -> Source:
    """Trajectory files as a Source whose inputs are split -> file paths and whose sizes count files
    (a Beam shard reads whole files; many files make many shards)."""
    from data import tf_agents_source  # imports TensorFlow: only for this kind

    if env:
        raise DataError(
            f"--env={env}: TF-Agents trajectories carry their own rewards (stored under "
            f"'{tf_agents_source.REWARD_KEY}'); there are no task rewards to relabel: drop --env"
        )
    _refuse_options(f"tf_agents:{pattern}", options, "TF-Agents action specs must already be bounded to [-1, 1]",
                    ("action_low", "action_high"))
    if "://" not in pattern:
        pattern = os.path.abspath(pattern)
    found = tf_agents_source.describe(pattern)
    return Source(
        spec=f"tf_agents:{pattern}", kind="tf_agents", env=None, env_id=pattern,
        reward_kind=None, obs_dim=found["obs_dim"], action_dim=found["action_dim"],
        reward_keys=(tf_agents_source.REWARD_KEY,), targets={}, inputs=found["inputs"],
        sizes={split: len(paths) for split, paths in found["inputs"].items()},
        transitions_hint=found["transitions"], eval_env=_eval_env(options),
    )


def open_source(spec: str, env: str | None = None, eval_env: str | None = None, action_low: str | None = None,
                action_high: str | None = None) -> Source:
    """Checks and describes 'ogbench:PATH.npz', 'minari:DATASET_ID', 'npz:PATH.npz' or
    'tf_agents:PATH'; DataError if unusable.

    `env` overrides the env family that is otherwise read from the file or dataset name.
    `eval_env` (a registered gymnasium id), `action_low`/`action_high` ('L' or 'L1,L2,...', env
    units) describe a generic source's env: see data/action_bounds.py for the bounds rule.
    """
    options = {"eval_env": eval_env, "action_low": action_low, "action_high": action_high}
    kind, sep, rest = str(spec).partition(":")
    if not sep or kind not in KINDS or not rest:
        raise DataError(
            f"--input={spec!r}: use 'ogbench:PATH/NAME.npz' (OGBench play data, NAME-val.npz beside "
            f"it), 'minari:DATASET_ID' (a local Minari dataset), 'npz:PATH/NAME.npz' (D4RL layout) or "
            f"'tf_agents:PATH' (TF-Agents trajectory files)."
        )
    opener = {"ogbench": _open_ogbench, "minari": _open_minari, "npz": _open_npz, "tf_agents": _open_tf_agents}[kind]
    source = opener(rest, env, options)
    for split, count in source.transitions_hint.items():
        if not count:  # every shard would be empty: no dataset to train or validate on
            named = source.inputs[split]
            named = ", ".join(named) if isinstance(named, (list, tuple)) else named
            raise DataError(f"{source.spec}: the {split} split ({named}) holds no transitions "
                            f"(every episode ends after its first step); record longer episodes.")
    return source


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One Beam element: write rows/episodes [start, stop) of `split` as one shard file."""

    split: str
    index: int
    count: int
    start: int
    stop: int

    @property
    def file_name(self) -> str:
        return schema.shard_file_name(self.split, self.index, self.count)


def plan_shards(source: Source, num_shards: int | None = None) -> list:
    """Contiguous, near-equal ranges per split; `num_shards` is the train split's shard count
    (default: one per ROWS_PER_SHARD transitions), val gets a proportional share (>= 1)."""
    train_transitions = max(1, source.transitions_hint["train"])
    if num_shards is None:
        num_shards = math.ceil(train_transitions / ROWS_PER_SHARD)
    if int(num_shards) < 1:
        raise DataError(f"--num_shards={num_shards}: use a positive number of shards.")
    if int(num_shards) > train_transitions:  # some shards would hold nothing
        raise DataError(f"--num_shards={num_shards}: more shards than the {train_transitions} training "
                        f"transitions of {source.spec}; use at most {train_transitions}.")
    tasks = []
    for split, size in source.sizes.items():
        share = source.transitions_hint[split] / train_transitions
        wanted = num_shards if split == "train" else round(num_shards * share)
        count = int(min(max(1, wanted), size))
        bounds = np.linspace(0, size, count + 1).round().astype(int)
        tasks.extend(ShardTask(split, i, count, int(bounds[i]), int(bounds[i + 1])) for i in range(count))
    return tasks


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with ogbench_source.open_binary(path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def release_caches() -> None:
    """Drops the arrays/datasets that reads cached in this process (in-process Beam runs)."""
    ogbench_source._load_cached.cache_clear()
    minari_source._open.cache_clear()
    npz_source.release_caches()


def combined_checksum(checksums: dict) -> str:
    """One sha256 over the sorted (file name, sha256) pairs: equal inputs give equal values."""
    digest = hashlib.sha256()
    for path, value in sorted(checksums.items(), key=lambda item: os.path.basename(item[0])):
        digest.update(f"{os.path.basename(path)}\0{value}\n".encode())
    return digest.hexdigest()
