"""What an evaluation return is compared with on a dataset's own rewards: the source's reference
scores (D4RL's random and expert returns, which Minari keeps as ref_min_score / ref_max_score) and the
dataset's own episode returns (the behaviour policy's mean and best).

    reference = ReturnReference.from_record(run_dataset)   # pipeline.config.dataset_record
    reference.normalized_score(-350.0)                      # 100 (R - ref_min) / (ref_max - ref_min), or nan
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional


def _finite(value) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclasses.dataclass(frozen=True)
class ReturnReference:
    """Reference returns; each None when the dataset does not give it."""

    ref_min_score: Optional[float] = None
    ref_max_score: Optional[float] = None
    dataset_mean: Optional[float] = None  # mean undiscounted return of the training episodes
    dataset_best: Optional[float] = None  # best training episode's return

    @property
    def has_scores(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None

    def normalized_score(self, episode_return: float) -> float:
        """100 (R - ref_min) / (ref_max - ref_min) (D4RL's normalised score); nan without reference scores."""
        if not self.has_scores:
            return math.nan
        return 100.0 * (float(episode_return) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    @classmethod
    def from_record(cls, dataset: Optional[Mapping], where: str = "dataset") -> "ReturnReference":
        """From a run's dataset record. ValueError naming `where`, the fields and values when only one reference
        score is given, one is not a finite number, or ref_max_score <= ref_min_score."""
        dataset = dataset or {}
        low, high = dataset.get("ref_min_score"), dataset.get("ref_max_score")
        if (low is None) != (high is None) or (low is not None and (_finite(low) is None or _finite(high) is None
                                                                     or _finite(high) <= _finite(low))):
            raise ValueError(f"{where}: fields 'ref_min_score'={low!r} and 'ref_max_score'={high!r} must be two finite "
                             "numbers with ref_max_score > ref_min_score, or both null.")
        returns = dataset.get("returns") or {}
        return cls(_finite(low), _finite(high), _finite(returns.get("mean")), _finite(returns.get("max")))
