"""pipeline/training.py: the schedule check, the validation batches and run_training under a strategy."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_schedule_off_the_log_grid_is_refused():
    from pipeline import training
    from pipeline.config import make_run_config

    for overrides, message in ((["steps=12", "log_every=5"], "gradient_steps=12 is not a multiple of log_every=5"),
                               (["eval_every=7", "log_every=5"], "eval_every=7 is not a multiple of log_every=5"),
                               (["steps=0"], "gradient_steps=0: the number of gradient steps must be positive")):
        with pytest.raises(training.TrainingError, match=message):
            training.check_schedule(make_run_config("cube", overrides=overrides).schedule)
    training.check_schedule(make_run_config("cube", overrides=["steps=10", "log_every=5", "eval_every=0"]).schedule)


def test_unknown_strategy_is_refused():
    from pipeline import training

    with pytest.raises(training.TrainingError, match="--strategy='gpu' is not one of: default, mirrored, tpu"):
        training.make_strategy("gpu")


def test_validation_batches_are_the_val_split_with_autotuning_off(cube_tfrecord_dir):
    # Keras makes a new validation iterator at every log boundary; dropping the old one with tf.data's
    # autotuning on waits for the autotune thread (BENCHMARKS.md).
    import numpy as np
    from data import reader
    from pipeline import training
    from pipeline.config import make_run_config

    config = make_run_config("cube", values={"batch_size": 32, "seed": 3})
    validation = training.validation_dataset(cube_tfrecord_dir, config)
    assert validation.options().autotune.enabled is False
    expected = reader.make_dataset(str(cube_tfrecord_dir), split="val", task=2, batch_size=32, seed=3)
    batches = 0
    for got, want in zip(validation.take(3), expected.take(3)):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
        batches += 1
    assert batches == 3


MIRRORED_SCRIPT = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline import training
from pipeline.config import make_run_config
config = make_run_config("cube", values={{"gradient_steps": 5, "log_every": 5, "eval_episodes": 0, "batch_size": 32,
                                         "actor_hidden_dims": (32, 32), "critic_hidden_dims": (32, 32),
                                         "jit_compile": False}})
summary = training.run_training(config, {data!r}, {workdir!r}, strategy_name="mirrored", export=False,
                                show_progress=False)
print(json.dumps({{"replicas": training.make_strategy("mirrored").num_replicas_in_sync, **summary}}))
"""


def test_mirrored_strategy_trains_on_two_logical_cpus(cube_tfrecord_dir, tmp_path):
    script = MIRRORED_SCRIPT.format(data=str(cube_tfrecord_dir), workdir=str(tmp_path / "run"))
    # `python -c` from ROOT: the project's packages import from the working directory.
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2 and summary["step"] == 5
