"""Per-feature statistics (count, mean, std, min, max per dimension) that merge across chunks.

Chunks are summarised independently on Beam workers and merged in the driver with Chan et
al.'s parallel variance formula, so the result does not depend on how rows were split.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class FeatureStats:
    """Summary of rows of one feature; arrays have the feature's per-row shape (flattened)."""

    count: int
    mean: np.ndarray  # float64 [dim]
    m2: np.ndarray  # float64 [dim], sum of squared deviations from the mean
    minimum: np.ndarray  # float64 [dim]
    maximum: np.ndarray  # float64 [dim]

    @classmethod
    def of(cls, values: np.ndarray) -> "FeatureStats":
        """Summary of values [N] or [N, dim] (N may be 0)."""
        values = np.asarray(values, np.float64)
        values = values.reshape(len(values), math.prod(values.shape[1:]))  # -1 is ambiguous for 0 rows
        if len(values) == 0:
            dim = values.shape[1]
            return cls(0, np.zeros(dim), np.zeros(dim), np.full(dim, np.inf), np.full(dim, -np.inf))
        mean = values.mean(axis=0)
        return cls(len(values), mean, ((values - mean) ** 2).sum(axis=0), values.min(axis=0),
                   values.max(axis=0))

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        count = self.count + other.count
        if count == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return FeatureStats(count, mean, m2, np.minimum(self.minimum, other.minimum),
                            np.maximum(self.maximum, other.maximum))

    def to_json(self) -> dict:
        """{count, mean, std, min, max}; std is the population std (ddof=0); lists per dimension."""
        std = np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)
        empty = self.count == 0
        return {
            "count": int(self.count),
            "mean": self.mean.tolist(),
            "std": std.tolist(),
            "min": [None] * len(self.minimum) if empty else self.minimum.tolist(),
            "max": [None] * len(self.maximum) if empty else self.maximum.tolist(),
        }

    def to_state(self) -> dict:
        """Exact, JSON-serialisable state for merging later (`from_state`)."""
        return {"count": int(self.count), "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": self.minimum.tolist(), "max": self.maximum.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "FeatureStats":
        return cls(int(state["count"]), np.asarray(state["mean"], np.float64),
                   np.asarray(state["m2"], np.float64), np.asarray(state["min"], np.float64),
                   np.asarray(state["max"], np.float64))


def summarise(columns: dict) -> dict:
    """feature -> FeatureStats for a dict of column arrays."""
    return {name: FeatureStats.of(values) for name, values in columns.items()}


def merge_all(summaries) -> dict:
    """Merges an iterable of {feature: FeatureStats} dicts feature by feature."""
    merged = {}
    for summary in summaries:
        for name, stats in summary.items():
            merged[name] = merged[name].merge(stats) if name in merged else stats
    return merged
