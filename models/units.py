"""The agent's side of the env's units: actions mapped from [-1, 1] to the env's Box, raw observations
standardised. The networks always work in [-1, 1] actions and (when configured) standardised
observations; `SORLAgent.act` and every export signature take raw observations and answer in env units.

    units = EnvUnits.from_run_dataset(run["dataset"], normalize_observations=True, obs_dim=3, action_dim=1)
    env_actions = units.to_env_actions(actions)          # low + (a + 1) (high - low) / 2
    agent_actions = units.from_env_actions(env_actions)  # 2 (x - low) / (high - low) - 1
    inputs = units.normalize_observations(observations)  # (s - mean) / max(std, OBSERVATION_STD_FLOOR)

The inverse of the dataset's affine map (data/: `action_bounds` in metadata.json). Without bounds
and statistics every method returns its input unchanged (OGBench runs, and runs written before
this existed), so their actions are what they always were.
"""

import dataclasses
import math
from typing import Mapping, Optional, Sequence, Tuple

import tensorflow as tf

# Observation dimensions that never vary in the training data (std 0) are divided by this, not 0.
OBSERVATION_STD_FLOOR = 1e-3


def _floats(values, length: int, where: str) -> Tuple[float, ...]:
    """`values` as a tuple of `length` finite floats; ValueError naming `where` otherwise."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is {values!r}: expected a list of {length} numbers.") from None
    if len(out) != length or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where} is {list(values)!r}: expected {length} finite numbers.")
    return out


@dataclasses.dataclass(frozen=True)
class EnvUnits:
    """Action bounds (None: actions already in [-1, 1]) and observation mean/std (None: raw inputs)."""

    action_low: Optional[Tuple[float, ...]] = None
    action_high: Optional[Tuple[float, ...]] = None
    observation_mean: Optional[Tuple[float, ...]] = None
    observation_std: Optional[Tuple[float, ...]] = None  # floored at OBSERVATION_STD_FLOOR

    def __post_init__(self):
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("EnvUnits: give both action_low and action_high, or neither.")
        if (self.observation_mean is None) != (self.observation_std is None):
            raise ValueError("EnvUnits: give both observation_mean and observation_std, or neither.")
        if self.action_low is not None and not all(h > l for l, h in zip(self.action_low, self.action_high)):
            raise ValueError(f"EnvUnits: action_high {list(self.action_high)} must exceed action_low "
                             f"{list(self.action_low)} in every dimension.")

    @property
    def maps_actions(self) -> bool:
        return self.action_low is not None

    @property
    def normalizes_observations(self) -> bool:
        return self.observation_mean is not None

    @classmethod
    def from_run_dataset(cls, dataset: Optional[Mapping], normalize_observations: bool, obs_dim: int,
                         action_dim: int, where: str = "dataset") -> "EnvUnits":
        """From a run's `dataset` record (pipeline.config.dataset_record: action_bounds and the training
        split's observation mean/std). ValueError naming `where`, the field and its value when a field
        has the wrong size, or when normalisation is asked for and the record has no statistics."""
        dataset = dataset or {}
        low = high = mean = std = None
        bounds = dataset.get("action_bounds")
        if bounds is not None:
            if not isinstance(bounds, Mapping) or "low" not in bounds or "high" not in bounds:
                raise ValueError(f"{where}: field 'action_bounds' is {bounds!r}: expected {{'low': [...], 'high': [...]}}.")
            low = _floats(bounds["low"], action_dim, f"{where}: field 'action_bounds.low'")
            high = _floats(bounds["high"], action_dim, f"{where}: field 'action_bounds.high'")
        if normalize_observations:
            stats = dataset.get("observation_statistics")
            if not isinstance(stats, Mapping) or stats.get("mean") is None or stats.get("std") is None:
                raise ValueError(
                    f"{where}: field 'observation_statistics' is {stats!r}, but normalize_observations=true needs "
                    "the training split's observation mean and std (metadata.json 'statistics'); re-run "
                    "preprocess.py, or set normalize_observations=false.")
            mean = _floats(stats["mean"], obs_dim, f"{where}: field 'observation_statistics.mean'")
            std = tuple(max(s, OBSERVATION_STD_FLOOR)
                        for s in _floats(stats["std"], obs_dim, f"{where}: field 'observation_statistics.std'"))
        try:
            return cls(low, high, mean, std)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    # ------------------------------------------------------------------------------ the maps (TF)
    def to_env_actions(self, actions):
        """[..., A] actions in [-1, 1] -> env units."""
        if not self.maps_actions:
            return actions
        low, high = _constant(self.action_low), _constant(self.action_high)
        return low + (actions + 1.0) * (0.5 * (high - low))

    def from_env_actions(self, actions):
        """[..., A] env-unit actions -> [-1, 1] (the inverse of to_env_actions)."""
        if not self.maps_actions:
            return actions
        low, high = _constant(self.action_low), _constant(self.action_high)
        return (actions - low) * (2.0 / (high - low)) - 1.0

    def normalize_observations(self, observations):
        """[B, obs_dim] raw observations -> what the networks take."""
        if not self.normalizes_observations:
            return observations
        return (observations - _constant(self.observation_mean)) / _constant(self.observation_std)

    # ---------------------------------------------------------------------------------- JSON form
    def to_dict(self) -> dict:
        return {k: None if v is None else list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Optional[Mapping]) -> "EnvUnits":
        values = dict(values or {})
        return cls(**{k: None if v is None else tuple(float(x) for x in v) for k, v in values.items()})


def _constant(values: Sequence[float]):
    return tf.constant(values, tf.float32)
