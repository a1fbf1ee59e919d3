"""The agent's hyper-parameters: one frozen dataclass, its JSON form, and the old flat form it replaced.

`AgentConfig` holds what defines a trained agent (networks, optimisers, losses, the default Euler
budget). The run around it (env, task, schedule) is pipeline/config.py's `RunConfig`; inference
options (Euler steps, best-of-N, cap_step_level) are arguments of `SORLAgent.act`.
"""

import dataclasses
import math
import numbers
import typing
from typing import Callable, Mapping, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Every hyper-parameter of a SORL agent. Defaults are the paper's cube-single-play settings."""

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
    # 'separate': one Adam per network (SPEC section 3). 'reference': the authors' JAX update, for
    # ablations against their code: one Adam over both networks stepped twice, critic loss into the
    # actor through a', Q loss on the pre-update critic, target EMAs from pre-update weights.
    update_rule: str = "separate"

    # RL objective.
    discount: float = 0.99  # Bellman discount.
    q_agg: str = "mean"  # Aggregation over critic members: 'mean' or 'min'.
    q_loss_coef: float = 10.0  # Weight of the normalised Q loss in the actor objective.
    fm_coef: float = 10.0  # Weight of the flow-matching loss.
    sc_coef: float = 10.0  # Weight of the self-consistency loss.
    reward_scale: float = 1.0  # Rewards are multiplied by this before the Bellman target.

    # Inputs.
    normalize_observations: bool = False  # Standardise observations with the training split's mean/std.

    # Shortcut model.
    m_disc: int = 8  # Finest discretisation (flow matching at h = 1/m_disc); a power of two.
    m_btt: int = 8  # Largest Euler unroll back-propagated through in training; a power of two.
    t_eps: float = 1e-5  # Interpolation epsilon: x_t = (1 - (1 - t_eps) t) x0 + t x1.
    inference_euler_steps: int = 4  # Euler steps of act() when the caller names none (M_inf).

    # Data order and randomness.
    batch_size: int = 256  # Global batch size (split across replicas under a strategy).
    seed: int = 0  # Seeds weight initialisation, training noise and the data order.

    def __post_init__(self):
        _validate(self)


# The flat SORLConfig of config.json files written before the agent and run configs were split:
# these keys described the run, not the agent, and are dropped when such a dict is read as an agent.
OLD_RUN_FIELDS = (
    "env", "task", "episode_length", "steps", "log_every", "eval_every", "eval_episodes",
    "checkpoint_every", "jit_compile", "cap_step_level",
)
# Old name -> current name, for the agent's and the schedule's fields.
RENAMED_FIELDS = {"inference_steps": "inference_euler_steps", "steps": "gradient_steps"}


# ---------------------------------------------------------------------------------- field checks
@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config field may hold. `parse` returns the value as stored (ints of float fields
    become floats, lists tuples), or None when `value` is not allowed; `allowed` says what is."""

    allowed: str
    parse: Callable[[object], object]


def _as_int(value):
    # bool is an int subclass, but `batch_size=True` is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _as_float(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def integer(low: int, high: Optional[int] = None) -> Rule:
    """An int in [low, high] (no upper end when high is None); bools are refused."""
    def parse(value):
        n = _as_int(value)
        return n if n is not None and n >= low and (high is None or n <= high) else None
    return Rule(f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]", parse)


def power_of_two(low: int = 1) -> Rule:
    """An int 2**j >= low."""
    def parse(value):
        n = _as_int(value)
        return n if n is not None and n >= low and n & (n - 1) == 0 else None
    examples = ", ".join(str(low * 2 ** j) for j in range(3))
    return Rule(f"a power of two >= {low} ({examples}, ...)", parse)


def real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True) -> Rule:
    """A finite float in the interval [low, high] with either end open; NaN and inf are refused."""
    def parse(value):
        x = _as_float(value)
        if x is None or not math.isfinite(x):
            return None
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        return x if above and below else None
    if high == math.inf:
        return Rule(f"a finite number {'>' if low_open else '>='} {low:g}", parse)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(f"a number in {interval}", parse)


def flag() -> Rule:
    return Rule("true or false", lambda value: value if isinstance(value, bool) else None)


def choice(*options: str) -> Rule:
    return Rule(" or ".join(repr(o) for o in options), lambda value: value if value in options else None)


def widths() -> Rule:
    """One or more layer widths, as a tuple of ints >= 1."""
    def parse(value):
        if not isinstance(value, (tuple, list)) or not value:
            return None
        ints = [_as_int(v) for v in value]
        return tuple(ints) if all(n is not None and n >= 1 for n in ints) else None
    return Rule("one or more widths >= 1, e.g. (256, 256)", parse)


def check_fields(cfg, rules: Mapping[str, Rule], extra: Sequence[str] = ()) -> None:
    """Stores each field of frozen dataclass `cfg` in its parsed form; ValueError with one
    "field=value must be <allowed>" per problem (plus `extra` problems) when any is not allowed."""
    problems = []
    for name, rule in rules.items():
        value = getattr(cfg, name)
        try:
            parsed = rule.parse(value)
        except TypeError:  # e.g. an unhashable value offered to choice()
            parsed = None
        if parsed is None:
            problems.append(f"{name}={value!r} must be {rule.allowed}")
        else:
            object.__setattr__(cfg, name, parsed)
    problems += list(extra)
    if problems:
        raise ValueError(f"Invalid {type(cfg).__name__}: " + "; ".join(problems) + ".")


MAX_SEED = 2**31 - 1  # seeds feed int64 stream keys (seed * NUM_STREAMS) and numpy/gymnasium seeds

# Every AgentConfig field and what it may hold (a test checks that none is missing).
AGENT_RULES = {
    "actor_hidden_dims": widths(),
    "critic_hidden_dims": widths(),
    "actor_layer_norm": flag(),
    "critic_layer_norm": flag(),
    "num_critics": integer(1),
    "actor_lr": real(0, low_open=True),
    "critic_lr": real(0, low_open=True),
    "adam_beta_1": real(0, 1),
    "adam_beta_2": real(0, 1),
    "grad_clip_norm": real(0),
    "tau": real(0, 1, low_open=True, high_open=False),  # tau = 0 would never move the targets
    "update_rule": choice("separate", "reference"),
    "discount": real(0, 1),  # discount = 1 makes the Bellman target unbounded
    "q_agg": choice("mean", "min"),
    "q_loss_coef": real(0),
    "fm_coef": real(0),
    "sc_coef": real(0),
    "reward_scale": real(0, low_open=True),
    "normalize_observations": flag(),
    "m_disc": power_of_two(2),  # self-consistency needs two levels
    "m_btt": power_of_two(1),
    "t_eps": real(0, 1),
    "inference_euler_steps": integer(1),
    "batch_size": integer(1),
    "seed": integer(0, MAX_SEED),
}


def _validate(cfg: AgentConfig) -> None:
    """Raises ValueError naming each field, its value and what it must be."""
    extra = []
    if cfg.update_rule == "reference" and cfg.actor_lr != cfg.critic_lr:
        extra.append(
            f"update_rule='reference' steps one Adam over both networks, so actor_lr={cfg.actor_lr!r} "
            f"must equal critic_lr={cfg.critic_lr!r}"
        )
    check_fields(cfg, AGENT_RULES, extra)


def field_types(cls) -> dict:
    """{field name: type} of a config dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def to_dict(cfg) -> dict:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(cls, values: Mapping[str, object], what: str = ""):
    """`cls(**values)` from JSON values (lists become tuples, ints of float fields floats).

    Unknown keys raise ValueError naming them, `what` (where they came from) and the valid keys.
    """
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        where = f" in {what}" if what else ""
        raise ValueError(f"Unknown {cls.__name__} keys {unknown}{where}. Valid keys: {', '.join(types)}.")
    converted = {}
    for key, value in values.items():
        field_type = types[key]
        if typing.get_origin(field_type) is tuple:
            value = tuple(int(v) for v in value)
        elif field_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        converted[key] = value
    return cls(**converted)


def split_old_config(values: Mapping[str, object]) -> Tuple[dict, dict]:
    """An old flat SORLConfig dict -> (agent fields, run fields), both under their current names.

    A dict already in the new form comes back as (values, {}). Run fields are OLD_RUN_FIELDS.
    """
    agent, run = {}, {}
    for key, value in values.items():
        target = run if key in OLD_RUN_FIELDS else agent
        target[RENAMED_FIELDS.get(key, key)] = value
    return agent, run


def agent_config_to_dict(cfg: AgentConfig) -> dict:
    """JSON-ready dict of an AgentConfig (tuples become lists)."""
    return to_dict(cfg)


def agent_config_from_dict(values: Mapping[str, object]) -> AgentConfig:
    """Inverse of agent_config_to_dict; also reads the old flat SORLConfig dict of config.json
    files written before the split (its run fields are dropped, inference_steps is renamed).
    Unknown keys raise ValueError naming them."""
    agent, _ = split_old_config(values)
    return from_dict(AgentConfig, agent)
