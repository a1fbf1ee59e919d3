"""The TF-Agents trajectory source without tf-agents installed (files written by TF-Agents' own
observer are tested in tests/interop/test_interop_tf_agents.py, in the optional environment)."""
import numpy as np
import pytest

from data import sources, tf_agents_source
from data.errors import DataError
from data.tf_agents_source import FIRST, LAST, MID


def test_transition_rows_pair_each_step_with_its_continuation():
    # An episode of two steps, its boundary, a step cut off by a reset, and a last step never continued.
    step_type = np.array([FIRST, MID, LAST, FIRST, MID, FIRST, MID])
    next_step_type = np.array([MID, LAST, FIRST, MID, MID, MID, MID])
    rows, episode_ids, dropped = tf_agents_source.transition_rows(step_type, next_step_type, "x.tfrecord")
    np.testing.assert_array_equal(rows, [0, 1, 3, 5])
    np.testing.assert_array_equal(episode_ids, [0, 0, 1, 2])
    assert dropped == 2


def test_sources_open_tf_agents_files_by_kind(tmp_path):
    with pytest.raises(DataError, match="no TF-Agents trajectory file there"):
        sources.open_source(f"tf_agents:{tmp_path / 'missing.tfrecord'}")
    with pytest.raises(DataError, match="--env=cube-single: TF-Agents trajectories carry their own rewards"):
        sources.open_source(f"tf_agents:{tmp_path}", env="cube-single")
    with pytest.raises(DataError, match="'tf_agents:PATH'"):
        sources.open_source("hdf5:x")


def test_validation_file_names():
    assert tf_agents_source.validation_path_for("d/traj.tfrecord") == "d/traj-val.tfrecord"
    assert tf_agents_source.is_validation_file("d/traj-val.tfrecord")
    assert not tf_agents_source.is_validation_file("d/traj.tfrecord")


def test_files_without_spec_or_transitions_are_refused_in_one_line(tmp_path, monkeypatch):
    lonely = tmp_path / "lonely.tfrecord"
    lonely.write_bytes(b"")
    with pytest.raises(DataError, match=r"lonely.tfrecord.spec: spec file not found"):
        sources.open_source(f"tf_agents:{lonely}")
    # Files whose every record is an episode boundary: nothing to convert, so no empty shards either.
    monkeypatch.setattr(tf_agents_source, "describe", lambda pattern: {
        "inputs": {"train": (pattern,)}, "obs_dim": 3, "action_dim": 2, "transitions": {"train": 0}})
    with pytest.raises(DataError, match=r"lonely.tfrecord: the train split \(\S*lonely.tfrecord\) holds no transitions"):
        sources.open_source(f"tf_agents:{lonely}")
