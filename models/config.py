"""The agent's hyper-parameters: one frozen dataclass, its JSON form, and the old flat form it replaced.

`AgentConfig` holds what defines a trained agent (networks, optimisers, losses, the default Euler
budget). The run around it (env, task, schedule) is pipeline/config.py's `RunConfig`; inference
options (Euler steps, best-of-N, cap_step_level) are arguments of `SORLAgent.act`.
"""

import dataclasses
import typing
from typing import Mapping, Tuple


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


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _validate(cfg: AgentConfig) -> None:
    """Raises ValueError naming each field, its value and what it must be."""
    problems = []
    if cfg.q_agg not in ("mean", "min"):
        problems.append(f"q_agg={cfg.q_agg!r} must be 'mean' or 'min'")
    for name in ("m_disc", "m_btt"):
        value = getattr(cfg, name)
        if not _is_power_of_two(value):
            problems.append(f"{name}={value} must be a power of two (1, 2, 4, 8, ...)")
    if cfg.m_disc < 2:
        problems.append(f"m_disc={cfg.m_disc} must be >= 2 (self-consistency needs two levels)")
    if cfg.inference_euler_steps < 1:
        problems.append(f"inference_euler_steps={cfg.inference_euler_steps} must be >= 1")
    if cfg.num_critics < 1:
        problems.append(f"num_critics={cfg.num_critics} must be >= 1")
    if not 0.0 <= cfg.tau <= 1.0:
        problems.append(f"tau={cfg.tau} must be in [0, 1]")
    for name in ("actor_hidden_dims", "critic_hidden_dims"):
        value = getattr(cfg, name)
        if not value or any(width < 1 for width in value):
            problems.append(f"{name}={value} must be one or more widths >= 1")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size} must be >= 1")
    if problems:
        raise ValueError("Invalid AgentConfig: " + "; ".join(problems) + ".")


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
