"""Per-feature statistics: chunks without rows (a shard of single-row episodes) summarise and merge."""

import numpy as np

from data import stats


def test_statistics_of_no_rows_merge_as_nothing():
    for shape in [(0,), (0, 3), (0, 2, 2)]:
        empty = stats.FeatureStats.of(np.zeros(shape))
        assert empty.count == 0 and len(empty.mean) == max(1, int(np.prod(shape[1:])))
    full = stats.FeatureStats.of(np.ones((2, 3)))
    assert stats.FeatureStats.of(np.zeros((0, 3))).merge(full).to_json() == full.to_json()
