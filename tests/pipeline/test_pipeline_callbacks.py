"""pipeline/callbacks.py: each role at a log boundary, in fit's order, on a stand-in model."""
import csv

import numpy as np
import pytest
import tensorflow as tf

from pipeline import callbacks


class Model:
    stop_training = False


def attach(*cbs):
    model = Model()
    for cb in cbs:
        cb.set_model(model)
    return model


@pytest.fixture
def manager(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "ckpt"), max_to_keep=2)
    manager.save(checkpoint_number=5)
    return manager


def test_non_finite_loss_stops_training_and_keeps_the_checkpoint(tmp_path, manager):
    state = callbacks.TrainingState(start_step=5)
    guard = callbacks.NonFiniteGuard(state, manager)
    writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard"))
    logger = callbacks.MetricsLogger(state, writer, tmp_path / "metrics.csv")
    checkpoint = callbacks.PeriodicCheckpoint(state, manager, every=5)
    model = attach(state, guard, logger, checkpoint)

    logs = {"critic/loss": np.float32(1.0), "actor/loss": np.float32(np.nan)}
    for cb in (state, guard):
        cb.on_train_batch_end(0, logs)
    assert model.stop_training
    assert "non-finite loss at step 6: actor/loss=nan" in state.failure and "ckpt-5" in state.failure
    # At step 10 (a checkpoint step) nothing is logged or saved after the bad step.
    state.step = 10
    for cb in (state, guard, logger, checkpoint):
        cb.on_epoch_end(0, {"critic/loss": 1.0})
    assert manager.latest_checkpoint.endswith("ckpt-5"), "no checkpoint is written after a non-finite loss"
    assert not (tmp_path / "metrics.csv").exists()


def test_a_boundary_logs_then_checkpoints_on_the_grid(tmp_path, manager):
    state = callbacks.TrainingState(start_step=5)
    writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard"))
    fit_list = [state, callbacks.NonFiniteGuard(state, manager),
                callbacks.MetricsLogger(state, writer, tmp_path / "metrics.csv"),
                callbacks.PeriodicCheckpoint(state, manager, every=10)]
    attach(*fit_list)
    for end_step in (10, 15):
        for _ in range(5):
            for cb in fit_list:
                cb.on_train_batch_end(0, {"critic/loss": np.float32(0.5)})
        for cb in fit_list:
            cb.on_epoch_end(0, {"critic/loss": 0.5, "val_critic/loss": 0.7})
        assert state.step == end_step
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [10, 15]
    assert float(rows[0]["val_critic/loss"]) == pytest.approx(0.7) and float(rows[0]["perf/steps_per_second"]) > 0
    assert manager.latest_checkpoint.endswith("ckpt-10"), "checkpoint_every=10: step 15 is not saved"
    assert int(manager.checkpoint.step.numpy()) == 10


def test_a_stop_request_ends_fit_after_the_step_in_flight():
    state = callbacks.TrainingState(start_step=0)
    model = attach(state)
    state.request_stop(15)
    assert not model.stop_training and state.stopping
    state.on_train_batch_end(0, {})
    assert model.stop_training and state.step == 1


def test_progress_line_without_a_bar(capsys):
    state = callbacks.TrainingState(start_step=0)
    progress = callbacks.ProgressReporter(state, total_steps=80_000, show_bar=False)
    attach(state, progress)
    progress.on_train_begin()
    state.step, state.steps_per_second = 1000, 8.0
    progress.on_epoch_end(0, {"critic/loss": 0.25, "actor/fm_loss": 1.5, "other": 3.0})
    line = capsys.readouterr().out.strip()
    # 79,000 steps at 8/s: tqdm's formatter keeps hours past 24 as hours.
    assert line == "step 1000/80000 (1.2%) 8.00 steps/s ETA 2:44:35 critic/loss=0.25 actor/fm_loss=1.5"
    state.steps_per_second = 0.5
    assert "ETA 43:53:20" in progress.progress_line({})
