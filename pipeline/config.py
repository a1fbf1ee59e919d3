"""A training run's configuration: the agent, the data it learns from, and the schedule.

    config = make_run_config("antmaze-large", {"seed": 3}, ["gradient_steps=1e5", "actor_hidden_dims=256,256"])
    config = make_run_config(None, {"eval_env": "Pendulum-v1"})   # a dataset's own rewards, generic preset
    save_run_config(workdir, config, obs_dim, action_dim, data_dir, strategy, dataset_record(metadata))
    config, obs_dim, action_dim, info = load_run_config(workdir)               # any version of it

`agent` (models.config.AgentConfig) and `data` define what a checkpoint is, so a run resumes only
with the same ones (check_resumable); the `schedule` says how long and how often, and may change.
The paper's preset of each env family lives on data.envs.EnvFamily; a run on a dataset's own rewards
(`env` None, reward key 'default') gets the paper's common settings, or any family's with `preset`.
"""

import dataclasses
import json
import typing
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple

from data import envs, schema
from data.errors import DataError
from data.files import write_json
from models import checkpoints
from models.config import (RENAMED_FIELDS, AgentConfig, Rule, check_fields, field_types, flag, from_dict,
                           integer, to_dict)


OWN_REWARD_KEY = "default"  # the reward key of every non-OGBench source (data/: minari, npz, tf_agents)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the agent learns from and is evaluated on; fixed for the life of a run."""

    env: Optional[str] = "cube-single-play"  # OGBench dataset family (stored canonical); None: the dataset's own rewards.
    task: Optional[int] = 2  # OGBench single-task reward id, 1..num_tasks of the family; None with env None.
    episode_length: Optional[int] = 200  # Evaluation episode length (None with env None: the eval env's own).
    eval_env: Optional[str] = None  # With env None: gymnasium id of the evaluation env (None: no evaluation).

    @property
    def label(self) -> str:
        """'cube-single-play task 2', or "the dataset's own rewards" for env None."""
        return f"{self.env} task {self.task}" if self.env is not None else "the dataset's own rewards"

    @property
    def reward_key(self) -> str:
        """The rewards/K feature this run trains on: 'task{n}' for OGBench, 'default' for own rewards."""
        return OWN_REWARD_KEY if self.env is None else schema.reward_key(self.task)

    def __post_init__(self):
        if self.env is None:
            return self._check_own_rewards()
        rules = {"episode_length": integer(1)}
        extra = [] if self.eval_env is None else [
            f"eval_env={self.eval_env!r} must be null for an OGBench run (it evaluates in its family's env; "
            "eval_env names the env of a run on a dataset's own rewards, env=null)"]
        key = self.env.strip() if isinstance(self.env, str) else None
        family = envs.FAMILIES.get(envs.ALIASES.get(key, key))  # the spellings envs.resolve_env accepts
        if family is None:
            rules["env"] = Rule("one of " + ", ".join(sorted(set(envs.ALIASES) | set(envs.FAMILIES))), lambda v: None)
        else:
            object.__setattr__(self, "env", family.name)  # one spelling, so resumption compares names
            task = integer(1, family.num_tasks)
            rules["task"] = Rule(f"{task.allowed} (the tasks of {family.name})", task.parse)
        check_fields(self, rules, extra)

    def _check_own_rewards(self):
        problems = []
        if self.task is not None:
            problems.append(f"task={self.task!r} names an OGBench task; a run on a dataset's own rewards (env=None) "
                            "has none")
        if self.episode_length is not None and integer(1).parse(self.episode_length) is None:
            problems.append(f"episode_length={self.episode_length!r} must be an integer >= 1 or null (the env's own)")
        if self.eval_env is not None and not (isinstance(self.eval_env, str) and self.eval_env.strip()
                                              and ":" not in self.eval_env):
            problems.append(f"eval_env={self.eval_env!r} must be a gymnasium env id such as 'Pendulum-v1' "
                            "(no 'module:' prefix)")
        check_fields(self, {}, problems)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run trains and how often it logs, evaluates and saves; may change on resume."""

    gradient_steps: int = 1_000_000  # Gradient steps (updates) of the whole run.
    log_every: int = 5_000  # Gradient steps between metric logs.
    eval_every: int = 100_000  # Gradient steps between environment evaluations (0: only at the end).
    eval_episodes: int = 50  # Episodes per task and Euler budget in an evaluation (0: none).
    checkpoint_every: int = 100_000  # Gradient steps between checkpoints.
    jit_compile: bool = True  # Compile the train step with XLA.

    def __post_init__(self):
        check_fields(self, SCHEDULE_RULES)


# Every Schedule field and what it may hold. Nothing needs to divide anything: the loop's log
# windows end at multiples of log_every and at gradient_steps, evaluations and checkpoints happen
# at the exact multiples of their own periods (pipeline/training.py).
SCHEDULE_RULES = {
    "gradient_steps": integer(1),
    "log_every": integer(1),
    "eval_every": integer(0),
    "eval_episodes": integer(0),
    "checkpoint_every": integer(0),
    "jit_compile": flag(),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run is given: agent hyper-parameters, data source, schedule."""

    agent: AgentConfig = AgentConfig()  # What the networks, losses and optimisers are.
    data: DataSpec = DataSpec()  # The env family and task the agent learns.
    schedule: Schedule = Schedule()  # How long and how often.


_SECTIONS = {"agent": AgentConfig, "data": DataSpec, "schedule": Schedule}
# Field name -> (section, type); names are unique across the three, so a flag or --set needs no prefix.
FIELDS = {name: (section, kind) for section, cls in _SECTIONS.items() for name, kind in field_types(cls).items()}
assert len(FIELDS) == sum(len(dataclasses.fields(cls)) for cls in _SECTIONS.values()), "field names must be unique"
# Old names that --set and flags still accept; cap_step_level is refused with this advice.
OLD_NAMES = dict(RENAMED_FIELDS)
_CAP_STEP_LEVEL_MOVED = (
    "cap_step_level is no longer a training setting: it is an inference option; pass --cap_step_level "
    "to pipeline/evaluate.py or serving/export.py instead."
)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def parse_value(key: str, text: str) -> object:
    """`text` parsed as the type of field `key` (ints accept "1e6", tuples "256,256", bools true/false,
    optional fields "none"/"null").

    ValueError naming the key and the value when it does not parse.
    """
    field_type = FIELDS[key][1]
    arguments = [a for a in typing.get_args(field_type) if a is not type(None)]
    if typing.get_origin(field_type) is typing.Union and len(arguments) == 1:  # Optional[X]
        if text.strip().lower() in ("none", "null"):
            return None
        field_type = arguments[0]
    try:
        if field_type is bool:
            return _parse_bool(text)
        if field_type is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError("not an integer")
            return int(number)
        if field_type is float:
            return float(text)
        if field_type is str:
            return text
        if typing.get_origin(field_type) is tuple:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(int(p) for p in parts)
    except ValueError as error:
        type_name = "comma-separated ints" if typing.get_origin(field_type) is tuple else field_type.__name__
        raise ValueError(f"{key}={text!r} is not a valid {type_name}: {error}.") from None
    raise TypeError(f"Field {key} has unsupported type {field_type}.")


def _current_name(key: str, given: str) -> str:
    """The current field name of `key` (old names mapped); ValueError for cap_step_level or unknown keys."""
    key = OLD_NAMES.get(key, key)
    if key == "cap_step_level":
        raise ValueError(f"{given}: {_CAP_STEP_LEVEL_MOVED}")
    if key not in FIELDS:
        raise ValueError(f"Unknown config key {key!r} in {given}. Valid keys: {', '.join(FIELDS)}.")
    return key


def parse_overrides(overrides: Iterable[str]) -> dict:
    """["key=value", ...] -> {current field name: typed value}; ValueError naming the bad item."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value.")
        key, text = (part.strip() for part in item.split("=", 1))
        key = _current_name(key, f"override {item!r}")
        try:
            parsed[key] = parse_value(key, text)
        except ValueError as error:
            raise ValueError(f"Override {item!r}: {error}") from None
    return parsed


# `--scale`: what a run's defaults are sized for. "paper": the paper's networks and 1M steps (a GPU run).
# "cpu": networks and steps a 2-core CPU trains to a policy that solves cube-single task 2 most of the
# time in about an hour, data generation included (BENCHMARKS.md "First run on 2 cores"). Typed flags
# and --set still override each field.
SCALES = {
    "paper": {},
    "cpu": {"actor_hidden_dims": (256, 256, 256), "critic_hidden_dims": (256, 256, 256),
            "gradient_steps": 100_000, "eval_every": 20_000, "checkpoint_every": 10_000, "log_every": 1_000},
}
# Play episodes regenerated when a run's data is missing (None: the paper's 1000); each size keeps its
# own folders (pipeline/datasets.py), so a small first run never feeds a later paper run.
SCALE_GENERATE_EPISODES = {"paper": None, "cpu": 300}


def make_run_config(env: Optional[str] = "cube", values: Mapping[str, object] = {}, overrides: Iterable[str] = (),
                    preset: Optional[str] = None, scale: str = "paper") -> RunConfig:
    """The paper's preset for `env`'s family, then `values`, then `overrides` on top.

    env None: a run on a dataset's own rewards (reward key 'default'), with the paper's common
        settings (SPEC 5: the AgentConfig defaults; q_loss_coef, discount and q_agg as cube-single's).
    preset: an env family (any spelling) whose agent settings (q_loss_coef, discount, q_agg) to use
        instead of `env`'s or the common ones.
    scale: a key of SCALES, whose fields come after the preset and before `values`.
    values: {field name: typed value} of any of the three sections (e.g. argparse flags); None
        values are ignored. overrides: "key=value" strings (--set), parsed by the field's type.
    An `env` in values or overrides picks that family's preset. Old names (`steps`,
    `inference_steps`) are accepted. ValueError naming the key and value on anything wrong.
    """
    given = {}
    for key, value in values.items():
        if value is not None:
            given[_current_name(key, f"{key}={value!r}")] = value
    given.update(parse_overrides(overrides))
    env = given.pop("env", env)
    if env is None:
        sections = {"agent": {}, "data": dict(env=None, task=None, episode_length=None), "schedule": {}}
    else:
        family = envs.resolve_env(env)
        sections = {
            "agent": dict(q_loss_coef=family.q_loss_coef, discount=family.discount, q_agg=family.q_agg),
            "data": dict(env=family.name, task=family.default_task, episode_length=family.episode_length),
            "schedule": {},
        }
    if preset is not None:
        chosen = envs.resolve_env(preset)
        sections["agent"] = dict(q_loss_coef=chosen.q_loss_coef, discount=chosen.discount, q_agg=chosen.q_agg)
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: use one of {', '.join(SCALES)}.")
    for key, value in {**SCALES[scale], **given}.items():
        sections[FIELDS[key][0]][key] = value
    built, problems = {}, []
    for name, fields in sections.items():  # every section checked, so one run shows every problem
        try:
            built[name] = _SECTIONS[name](**fields)
        except ValueError as error:
            problems.append(str(error).rstrip("."))
    if problems:
        raise ValueError("; ".join(problems) + ".")
    return RunConfig(**built)


def run_config_to_dict(config: RunConfig) -> dict:
    """{"agent": {...}, "data": {...}, "schedule": {...}}, JSON-ready."""
    return {name: to_dict(getattr(config, name)) for name in _SECTIONS}


def dataset_record(metadata: Mapping) -> dict:
    """What a run keeps of its dataset's metadata.json in config.json (field `dataset`), so the run
    alone rebuilds its agent's units (models/units.py) and reports normalised scores:

        action_bounds            {low, high} in env units, or None (actions already in [-1, 1])
        observation_statistics   {mean, std} of the training split's observations
        eval_env                 the gymnasium id the dataset names, or None
        ref_min_score, ref_max_score   the source's reference returns (D4RL), or None
        returns                  {mean, std, min, max, episodes} of the training episodes' own returns, or None
    """
    observations = ((metadata.get("statistics") or {}).get("train") or {}).get("observations") or {}
    return {
        "action_bounds": metadata.get("action_bounds"),
        "observation_statistics": ({"mean": observations.get("mean"), "std": observations.get("std")}
                                   if observations else None),
        "eval_env": metadata.get("eval_env"),
        "ref_min_score": metadata.get("ref_min_score"),
        "ref_max_score": metadata.get("ref_max_score"),
        "returns": (metadata.get("dataset_returns") or {}).get("train"),
    }


def _json_equal(value):
    """`value` as config.json stores it, so a record read back compares equal to a fresh one."""
    return json.loads(json.dumps(value))


def make_agent(agent_config, obs_dim: int, action_dim: int, dataset: Optional[Mapping], where: str):
    """A SORLAgent whose units come from `dataset` (dataset_record's form; None: identity units).
    DataError naming `where` (the file the record came from), the field and the value when it does not fit."""
    from models.sorl import SORLAgent
    from models.units import EnvUnits

    try:
        units = EnvUnits.from_run_dataset(dataset, agent_config.normalize_observations, obs_dim, action_dim, where)
    except ValueError as error:
        raise DataError(str(error)) from None
    return SORLAgent(agent_config, obs_dim, action_dim, env_units=units)


def save_run_config(workdir, config: RunConfig, obs_dim: int, action_dim: int, data_dir: str, strategy: str,
                    dataset: Optional[Mapping] = None) -> str:
    """Writes workdir/config.json (the layout of models.checkpoints) atomically; returns its path.
    `dataset`: dataset_record of the run's metadata.json (None: no record, identity units)."""
    payload = dict(run_config_to_dict(config), obs_dim=int(obs_dim), action_dim=int(action_dim),
                   data_dir=None if data_dir is None else str(data_dir), strategy=strategy)
    if dataset is not None:
        payload["dataset"] = dict(dataset)
    path = Path(workdir) / checkpoints.CONFIG_FILE
    write_json(path, payload, sort_keys=True)
    return str(path)


def load_run_config(workdir) -> Tuple[RunConfig, int, int, dict]:
    """(RunConfig, obs_dim, action_dim, {"data_dir", "strategy", "dataset"}) from workdir/config.json
    ("dataset": its dataset_record, None for runs written before it existed).

    Reads the current layout and the one written before the agent and run configs were split.
    FileNotFoundError / ValueError naming the file and what is wrong.
    """
    run = checkpoints.read_config_file(workdir)
    path = Path(workdir) / checkpoints.CONFIG_FILE
    try:
        config = RunConfig(**{name: from_dict(cls, run[name], str(path)) for name, cls in _SECTIONS.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    info = {"data_dir": run.get("data_dir"), "strategy": run.get("strategy"), "dataset": run.get("dataset")}
    return config, int(run["obs_dim"]), int(run["action_dim"]), info


# The dataset record's fields that shape the agent (its action units and observation standardisation).
UNIT_FIELDS = ("action_bounds", "observation_statistics")


def check_resumable(workdir, config: RunConfig, dataset: Optional[Mapping] = None) -> None:
    """ValueError unless `config`'s agent and data, and the action bounds and observation statistics
    of `dataset` (dataset_record of the data now given), equal those saved in workdir/config.json.

    The schedule may differ: it changes how long and how often, not what is trained.
    """
    saved, _, _, extra = load_run_config(workdir)
    changed = []
    for section in ("agent", "data"):
        before, now = to_dict(getattr(saved, section)), to_dict(getattr(config, section))
        changed += [f"{section}.{k}: saved {before[k]!r} vs now {now[k]!r}" for k in before if before[k] != now[k]]
    if dataset is not None and extra.get("dataset") is not None:
        changed += [f"dataset.{field}: the data now given has other values" for field in UNIT_FIELDS
                    if _json_equal(extra["dataset"].get(field)) != _json_equal(dataset.get(field))]
    if changed:
        raise ValueError(
            f"{Path(workdir) / checkpoints.CONFIG_FILE} was written by a run with other settings "
            f"({', '.join(changed)}); resume with the same settings, or pass a new --workdir."
        )
