"""SORL hyper-parameters: one frozen dataclass, the paper's per-environment presets, and parsing.

`get_config("cube")` gives the paper's cube-single-play settings (SPEC section 5); `overrides` are
"key=value" strings parsed by the field's type, so a command line can change any field:

    cfg = get_config("antmaze-large", ["steps=100000", "actor_hidden_dims=256,256"])
"""

import dataclasses
import typing
from typing import Iterable, Mapping, Tuple

from data import envs


@dataclasses.dataclass(frozen=True)
class SORLConfig:
    """Every hyper-parameter of a SORL run. Defaults are the paper's cube-single-play settings."""

    # Environment.
    env: str = "cube-single-play"  # OGBench dataset family (a key of PRESETS).
    task: int = 2  # Single-task reward id, 1..5 (the family's default task in OGBench).
    episode_length: int = 200  # Evaluation episode length (OGBench's max_episode_steps).

    # Networks.
    actor_hidden_dims: Tuple[int, ...] = (512, 512, 512, 512)  # Shortcut actor MLP widths.
    critic_hidden_dims: Tuple[int, ...] = (512, 512, 512, 512)  # Widths of each critic member's MLP.
    actor_layer_norm: bool = False  # LayerNorm after each actor hidden layer.
    critic_layer_norm: bool = True  # LayerNorm after each critic hidden layer.
    num_critics: int = 2  # Independent critic members (ensemble size).

    # Optimisation.
    actor_lr: float = 1e-4  # Adam learning rate of the actor.
    critic_lr: float = 1e-4  # Adam learning rate of the critic.
    adam_beta_1: float = 0.9  # Adam first-moment decay (both optimizers).
    adam_beta_2: float = 0.999  # Adam second-moment decay (both optimizers).
    grad_clip_norm: float = 1.0  # Global-norm gradient clipping per optimizer step (0 = off).
    tau: float = 0.005  # Target-network EMA rate: target <- tau * online + (1 - tau) * target.

    # RL objective.
    discount: float = 0.99  # Bellman discount.
    q_agg: str = "mean"  # Aggregation over critic members: 'mean' or 'min'.
    q_loss_coef: float = 10.0  # Weight of the normalised Q loss in the actor objective.
    fm_coef: float = 10.0  # Weight of the flow-matching loss.
    sc_coef: float = 10.0  # Weight of the self-consistency loss.

    # Shortcut model.
    m_disc: int = 8  # Finest discretisation (flow matching at h = 1/m_disc); a power of two.
    m_btt: int = 8  # Largest Euler unroll back-propagated through in training; a power of two.
    t_eps: float = 1e-5  # Interpolation epsilon: x_t = (1 - (1 - t_eps) t) x0 + t x1.
    inference_steps: int = 4  # Default Euler steps at inference (M_inf).
    # Inference with k > m_disc: False feeds d = log2 k (SPEC section 4), a level never trained;
    # True caps d at log2(m_disc), i.e. more, smaller steps of the flow-matching velocity.
    cap_step_level: bool = False

    # Training loop (read by pipeline/train.py).
    batch_size: int = 256  # Global batch size (split across replicas under a strategy).
    steps: int = 1_000_000  # Gradient steps.
    seed: int = 0  # Seeds weight initialisation, training noise and the data order.
    log_every: int = 5_000  # Steps between metric logs.
    eval_every: int = 100_000  # Steps between environment evaluations.
    eval_episodes: int = 50  # Episodes per task and inference budget in an evaluation.
    checkpoint_every: int = 100_000  # Steps between checkpoints.
    jit_compile: bool = True  # Compile train_step with XLA.

    def __post_init__(self):
        _validate(self)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _validate(cfg: SORLConfig) -> None:
    """Raises ValueError naming the field and value when a setting cannot work."""
    problems = []
    if cfg.q_agg not in ("mean", "min"):
        problems.append(f"q_agg={cfg.q_agg!r} must be 'mean' or 'min'")
    for name in ("m_disc", "m_btt"):
        value = getattr(cfg, name)
        if not _is_power_of_two(value):
            problems.append(f"{name}={value} must be a power of two (1, 2, 4, 8, ...)")
    if cfg.m_disc < 2:
        problems.append(f"m_disc={cfg.m_disc} must be >= 2 (self-consistency needs two levels)")
    if not 1 <= cfg.task <= 5:
        problems.append(f"task={cfg.task} must be one of 1..5 (OGBench single-task ids)")
    if cfg.inference_steps < 1:
        problems.append(f"inference_steps={cfg.inference_steps} must be >= 1")
    if cfg.num_critics < 1:
        problems.append(f"num_critics={cfg.num_critics} must be >= 1")
    if not 0.0 <= cfg.tau <= 1.0:
        problems.append(f"tau={cfg.tau} must be in [0, 1]")
    if not cfg.actor_hidden_dims or not cfg.critic_hidden_dims:
        problems.append("actor_hidden_dims and critic_hidden_dims need at least one layer")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size} must be >= 1")
    if problems:
        raise ValueError("Invalid SORLConfig: " + "; ".join(problems) + ".")


# Paper settings per OGBench family (SPEC section 5). default task and episode length are
# OGBench's own (reward_task_id 0 -> default task; max_episode_steps of the registered env).
PRESETS: Mapping[str, Mapping[str, object]] = {
    "cube-single-play": dict(q_loss_coef=10.0, discount=0.99, q_agg="mean", episode_length=200, task=2),
    "cube-double-play": dict(q_loss_coef=50.0, discount=0.99, q_agg="mean", episode_length=500, task=2),
    "scene-play": dict(q_loss_coef=100.0, discount=0.99, q_agg="mean", episode_length=750, task=2),
    "antmaze-large-navigate": dict(q_loss_coef=500.0, discount=0.99, q_agg="min", episode_length=1000, task=1),
    "antmaze-giant-navigate": dict(q_loss_coef=500.0, discount=0.995, q_agg="min", episode_length=1000, task=1),
    "humanoidmaze-medium-navigate": dict(
        q_loss_coef=100.0, discount=0.995, q_agg="mean", episode_length=2000, task=1
    ),
    "humanoidmaze-large-navigate": dict(
        q_loss_coef=500.0, discount=0.995, q_agg="mean", episode_length=2000, task=1
    ),
    "antsoccer-arena-navigate": dict(q_loss_coef=500.0, discount=0.995, q_agg="mean", episode_length=1000, task=4),
}

def resolve_env(env: str) -> str:
    """Maps any accepted spelling ('cube', 'cube-single', 'cube-single-v0', ...) to its PRESETS key.

    The spellings are data.envs' (the one registry of OGBench families); ValueError lists them.
    """
    return envs.resolve_env(env).name


def eval_env_id(family: str, task: int) -> str:
    """OGBench single-task id, e.g. ('cube-single-play', 2) -> 'cube-single-play-singletask-task2-v0'."""
    return envs.resolve_env(family).eval_env_name(task)


def _field_types() -> dict:
    hints = typing.get_type_hints(SORLConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(SORLConfig)}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


def _parse_value(key: str, text: str, field_type) -> object:
    """Parses `text` as the type of field `key`; ValueError naming the key and the value."""
    try:
        if field_type is bool:
            return _parse_bool(text)
        if field_type is int:
            number = float(text)  # accepts "1e6"
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
        raise ValueError(f"Override {key}={text!r}: cannot parse as {field_type}: {error}.") from None
    raise TypeError(f"Field {key} has unsupported type {field_type}.")


def parse_overrides(overrides: Iterable[str]) -> dict:
    """["key=value", ...] -> {key: typed value}; ValueError for unknown keys or malformed items."""
    types = _field_types()
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value.")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in types:
            raise ValueError(f"Unknown config key {key!r} in override {item!r}. Valid keys: {', '.join(types)}.")
        parsed[key] = _parse_value(key, text.strip(), types[key])
    return parsed


def get_config(env: str = "cube-single-play", overrides: Iterable[str] = ()) -> SORLConfig:
    """The paper's preset for `env` (family name or alias), then `overrides` ("key=value") on top."""
    parsed = parse_overrides(overrides)
    family = resolve_env(parsed.pop("env", env))  # an env override picks the preset too
    values = dict(PRESETS[family], env=family)
    values.update(parsed)
    return SORLConfig(**values)


def config_to_dict(cfg: SORLConfig) -> dict:
    """JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(values: Mapping[str, object]) -> SORLConfig:
    """Inverse of config_to_dict; unknown keys raise ValueError naming them."""
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"Unknown config keys {unknown}. Valid keys: {', '.join(types)}.")
    converted = {}
    for key, value in values.items():
        field_type = types[key]
        if typing.get_origin(field_type) is tuple:
            value = tuple(int(v) for v in value)
        elif field_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        converted[key] = value
    return SORLConfig(**converted)
