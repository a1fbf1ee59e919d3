"""A training run's configuration: the agent, the data it learns from, and the schedule.

    config = make_run_config("antmaze-large", {"seed": 3}, ["gradient_steps=1e5", "actor_hidden_dims=256,256"])
    save_run_config(workdir, config, obs_dim, action_dim, data_dir, strategy)   # RUN/config.json
    config, obs_dim, action_dim, info = load_run_config(workdir)               # any version of it

`agent` (models.config.AgentConfig) and `data` define what a checkpoint is, so a run resumes only
with the same ones (check_resumable); the `schedule` says how long and how often, and may change.
The paper's preset of each env family lives on data.envs.EnvFamily.
"""

import dataclasses
import typing
from pathlib import Path
from typing import Iterable, Mapping, Tuple

from data import envs
from data.files import write_json
from models import checkpoints
from models.config import (RENAMED_FIELDS, AgentConfig, Rule, check_fields, field_types, flag, from_dict,
                           integer, to_dict)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the agent learns from and is evaluated on; fixed for the life of a run."""

    env: str = "cube-single-play"  # OGBench dataset family (any spelling data.envs knows; stored canonical).
    task: int = 2  # Single-task reward id, 1..num_tasks of the family (data.envs.check_task).
    episode_length: int = 200  # Evaluation episode length (OGBench's max_episode_steps).

    def __post_init__(self):
        rules = {"episode_length": integer(1)}
        key = self.env.strip() if isinstance(self.env, str) else None
        family = envs.FAMILIES.get(envs.ALIASES.get(key, key))  # the spellings envs.resolve_env accepts
        if family is None:
            rules["env"] = Rule("one of " + ", ".join(sorted(set(envs.ALIASES) | set(envs.FAMILIES))), lambda v: None)
        else:
            object.__setattr__(self, "env", family.name)  # one spelling, so resumption compares names
            task = integer(1, family.num_tasks)
            rules["task"] = Rule(f"{task.allowed} (the tasks of {family.name})", task.parse)
        check_fields(self, rules)


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
    """`text` parsed as the type of field `key` (ints accept "1e6", tuples "256,256", bools true/false).

    ValueError naming the key and the value when it does not parse.
    """
    field_type = FIELDS[key][1]
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


def make_run_config(env: str = "cube", values: Mapping[str, object] = {}, overrides: Iterable[str] = ()) -> RunConfig:
    """The paper's preset for `env`'s family, then `values`, then `overrides` on top.

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
    family = envs.resolve_env(given.pop("env", env))
    sections = {
        "agent": dict(q_loss_coef=family.q_loss_coef, discount=family.discount, q_agg=family.q_agg),
        "data": dict(env=family.name, task=family.default_task, episode_length=family.episode_length),
        "schedule": {},
    }
    for key, value in given.items():
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


def save_run_config(workdir, config: RunConfig, obs_dim: int, action_dim: int, data_dir: str, strategy: str) -> str:
    """Writes workdir/config.json (the layout of models.checkpoints) atomically; returns its path."""
    payload = dict(run_config_to_dict(config), obs_dim=int(obs_dim), action_dim=int(action_dim),
                   data_dir=None if data_dir is None else str(data_dir), strategy=strategy)
    path = Path(workdir) / checkpoints.CONFIG_FILE
    write_json(path, payload, sort_keys=True)
    return str(path)


def load_run_config(workdir) -> Tuple[RunConfig, int, int, dict]:
    """(RunConfig, obs_dim, action_dim, {"data_dir", "strategy"}) from workdir/config.json.

    Reads the current layout and the one written before the agent and run configs were split.
    FileNotFoundError / ValueError naming the file and what is wrong.
    """
    run = checkpoints.read_config_file(workdir)
    path = Path(workdir) / checkpoints.CONFIG_FILE
    try:
        config = RunConfig(**{name: from_dict(cls, run[name], str(path)) for name, cls in _SECTIONS.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    info = {"data_dir": run.get("data_dir"), "strategy": run.get("strategy")}
    return config, int(run["obs_dim"]), int(run["action_dim"]), info


def check_resumable(workdir, config: RunConfig) -> None:
    """ValueError unless `config`'s agent and data equal those saved in workdir/config.json.

    The schedule may differ: it changes how long and how often, not what is trained.
    """
    saved, _, _, _ = load_run_config(workdir)
    changed = []
    for section in ("agent", "data"):
        before, now = to_dict(getattr(saved, section)), to_dict(getattr(config, section))
        changed += [f"{section}.{k}: saved {before[k]!r} vs now {now[k]!r}" for k in before if before[k] != now[k]]
    if changed:
        raise ValueError(
            f"{Path(workdir) / checkpoints.CONFIG_FILE} was written by a run with other settings "
            f"({', '.join(changed)}); resume with the same settings, or pass a new --workdir."
        )
