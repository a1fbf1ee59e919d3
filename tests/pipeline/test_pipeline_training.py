"""pipeline/training.py: the schedule check, the validation batches and run_training under a strategy."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("start, total, log_every, calls", [
    (0, 10, 5, [(0, 5, 2)]),
    (0, 7, 3, [(0, 3, 2), (6, 1, 1)]),  # the last window is shorter
    (0, 4, 10, [(0, 4, 1)]),  # log_every past the end: one window
    (0, 1, 1, [(0, 1, 1)]),
    (7, 20, 5, [(7, 3, 1), (10, 5, 2)]),  # off the grid after a stop: back onto it first
    (7, 9, 5, [(7, 2, 1)]),
    (12, 23, 5, [(12, 3, 1), (15, 5, 1), (20, 3, 1)]),
    (10, 10, 5, []),
    (12, 10, 5, []),
])
def test_log_windows_end_at_every_multiple_of_log_every_and_at_the_total(start, total, log_every, calls):
    from pipeline import training

    assert training.log_windows(start, total, log_every) == calls
    ends = [first + steps * (e + 1) for first, steps, epochs in calls for e in range(epochs)]
    assert ends == [s for s in range(start + 1, total + 1) if s % log_every == 0 or s == total]


def test_unknown_strategy_is_refused():
    from pipeline import training

    with pytest.raises(training.TrainingError, match="--strategy='gpu' is not one of: default, mirrored, tpu, multi_worker"):
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
                                         "jit_compile": False, "actor_lr": 1e-2, "critic_lr": 1e-2}})
summary = training.run_training(config, {data!r}, {workdir!r} + "/mirrored", strategy_name="mirrored", export=False,
                                show_progress=False)
training.run_training(config, {data!r}, {workdir!r} + "/default", export=False, show_progress=False)
# The same global batches, split over two replicas in the driver's input (row order) or not.
from models import checkpoints
mirrored, default = (checkpoints.load_agent({workdir!r} + "/" + name, say=print)[0] for name in ("mirrored", "default"))
diff = max(float(abs(a.numpy() - b.numpy()).max()) for a, b in zip(mirrored.variables, default.variables))
moved = float(abs(default.actor.weights[0].numpy() - type(default)(default.config, 28, 5).actor.weights[0].numpy()).max())
print(json.dumps({{"replicas": training.make_strategy("mirrored").num_replicas_in_sync, "max_abs_diff": diff,
                  "moved": moved, **summary}}))
"""


def test_mirrored_strategy_trains_on_two_logical_cpus_like_one_device(cube_tfrecord_dir, tmp_path):
    script = MIRRORED_SCRIPT.format(data=str(cube_tfrecord_dir), workdir=str(tmp_path / "run"))
    # `python -c` from ROOT: the project's packages import from the working directory.
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2 and summary["step"] == 5
    assert summary["moved"] > 1e-2 and summary["max_abs_diff"] < 1e-4  # as one device on the global batch


# ------------------------------------------------------------------ run_training in process, tiny
TINY = {"actor_hidden_dims": (16, 16), "critic_hidden_dims": (16, 16), "batch_size": 32, "jit_compile": False,
        "episode_length": 5}


def tiny_config(**schedule):
    from pipeline.config import make_run_config

    return make_run_config("cube", {**TINY, "eval_episodes": 0, **schedule})


def train(config, data_dir, workdir):
    """run_training without export or bar; returns (summary, the lines it logged)."""
    from pipeline import training

    lines = []
    summary = training.run_training(config, data_dir, workdir, export=False, show_progress=False,
                                    validation_batches=1, log=lines.append)
    return summary, lines


def csv_steps(path) -> list:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def checkpoint_steps(workdir) -> list:
    from models import checkpoints

    return sorted(checkpoints.checkpoint_files(Path(workdir) / "checkpoints"))


def test_periods_that_divide_nothing_act_at_their_exact_steps(cube_tfrecord_dir, tmp_path):
    config = tiny_config(gradient_steps=7, log_every=3, checkpoint_every=4, eval_every=5, eval_episodes=1)
    summary, _ = train(config, cube_tfrecord_dir, tmp_path / "run")
    assert summary["step"] == 7
    assert csv_steps(tmp_path / "run" / "metrics.csv") == [3, 6, 7]
    assert checkpoint_steps(tmp_path / "run") == [4, 7]  # 4 mid-window; 7 the end of the run
    assert sorted(set(csv_steps(tmp_path / "run" / "eval.csv"))) == [5, 7]  # 5 mid-window; 7 the final evaluation


@pytest.fixture(scope="module")
def finished_run(cube_tfrecord_dir, tmp_path_factory):
    """A run of 6 steps: logs at 2, 4, 6; checkpoints ckpt-2, ckpt-4, ckpt-6; evaluations at 3 and 6."""
    workdir = tmp_path_factory.mktemp("finished_run") / "run"
    train(tiny_config(gradient_steps=6, log_every=2, checkpoint_every=2, eval_every=3, eval_episodes=1),
          cube_tfrecord_dir, workdir)
    assert checkpoint_steps(workdir) == [2, 4, 6]
    return workdir


def copy_run(source, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(source, tmp_path / "run"))


RESUME = dict(log_every=2, checkpoint_every=2, eval_every=3, eval_episodes=1)


@pytest.mark.parametrize("damage", ["data truncated", "index emptied", "data deleted", "index garbage"])
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one_and_says_so(
        finished_run, cube_tfrecord_dir, tmp_path, damage):
    workdir = copy_run(finished_run, tmp_path)
    directory = workdir / "checkpoints"
    data, index = directory / "ckpt-6.data-00000-of-00001", directory / "ckpt-6.index"
    if damage == "data truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "index emptied":
        index.write_bytes(b"")
    elif damage == "data deleted":
        data.unlink()
    else:
        index.write_bytes(b"not an sstable" * 10)
    config_json = (workdir / "config.json").read_bytes()

    summary, lines = train(tiny_config(gradient_steps=6, **RESUME), cube_tfrecord_dir, workdir)
    text = "\n".join(lines)
    assert f"Skipping checkpoint {directory / 'ckpt-6'} (it does not restore: " in text
    assert f"Resuming {workdir} from {directory / 'ckpt-4'} (step 4)." in text
    assert f"Moved the checkpoints that do not restore to {directory / 'damaged'}." in text
    assert summary["step"] == 6 and checkpoint_steps(workdir) == [2, 4, 6]  # ckpt-6 trained again
    assert csv_steps(workdir / "metrics.csv") == [2, 4, 6]
    assert csv_steps(workdir / "eval.csv") == [3] * 4 + [6] * 4  # one row per Euler budget
    assert (workdir / "config.json").read_bytes() == config_json


@pytest.mark.parametrize("index", ["deleted", "garbage", "stale"])
def test_a_lost_checkpoint_index_still_resumes_from_the_newest_step(finished_run, cube_tfrecord_dir, tmp_path, index):
    import tensorflow as tf

    workdir = copy_run(finished_run, tmp_path)
    directory = workdir / "checkpoints"
    if index == "deleted":
        (directory / "checkpoint").unlink()
    elif index == "garbage":
        (directory / "checkpoint").write_text("\x00\x01 not a checkpoint state {")
    else:  # a kill between writing ckpt-6 and updating the index: it still names ckpt-4
        tf.compat.v1.train.update_checkpoint_state(str(directory), str(directory / "ckpt-4"))
    config_json = (workdir / "config.json").read_bytes()
    summary, lines = train(tiny_config(gradient_steps=8, **RESUME), cube_tfrecord_dir, workdir)
    assert f"Resuming {workdir} from {directory / 'ckpt-6'} (step 6)." in lines
    assert summary["step"] == 8 and csv_steps(workdir / "metrics.csv") == [2, 4, 6, 8]
    assert (workdir / "config.json").read_bytes() == config_json
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-8")


def test_no_checkpoint_restores_is_a_clear_error_and_config_json_is_kept(finished_run, cube_tfrecord_dir, tmp_path):
    from pipeline import training

    workdir = copy_run(finished_run, tmp_path)
    directory = workdir / "checkpoints"
    for step in (2, 4, 6):
        (directory / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(training.TrainingError) as caught:
        train(tiny_config(gradient_steps=8, **RESUME), cube_tfrecord_dir, workdir)
    message = str(caught.value)
    assert message.startswith(f"No checkpoint in {directory} restores: ")
    for step in (6, 4, 2):
        assert f"ckpt-{step} (ckpt-{step}.data-00000-of-00001, ckpt-{step}.index): " in message
    assert "config.json is kept" in message and "--workdir" in message
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before, "the run directory is untouched"


def test_checkpoints_without_config_json_are_refused(finished_run, cube_tfrecord_dir, tmp_path):
    from pipeline import training

    workdir = copy_run(finished_run, tmp_path)
    (workdir / "config.json").unlink()
    with pytest.raises(training.TrainingError, match=r"holds checkpoints \(ckpt-6, ckpt-4, ckpt-2\) but .*config\.json "
                                                     r"is missing: restore it to resume, or pass a new --workdir"):
        train(tiny_config(gradient_steps=8, **RESUME), cube_tfrecord_dir, workdir)
    assert not (workdir / "config.json").exists()


def test_what_a_killed_save_left_behind_is_removed(finished_run, cube_tfrecord_dir, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    directory = workdir / "checkpoints"
    (directory / "ckpt-8_temp").mkdir()
    (directory / "ckpt-8_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    (directory / "checkpoint.tmp0123456789abcdef").write_text("model_checkpoint_path: ")
    (workdir / ".eval.csv.0123abcd.tmp").write_text("step,")
    (workdir / ".learning_curve.png.89abcdef.tmp.png").write_bytes(b"\x89PNG")
    summary, lines = train(tiny_config(gradient_steps=6, **RESUME), cube_tfrecord_dir, workdir)
    removed = [line for line in lines if line.startswith("Removed what an interrupted save left behind: ")]
    assert len(removed) == 1
    for leftover in ("ckpt-8_temp", "checkpoint.tmp0123456789abcdef", ".eval.csv.0123abcd.tmp",
                     ".learning_curve.png.89abcdef.tmp.png"):
        assert leftover in removed[0]
    assert not list(directory.glob("*_temp*")) and not list(directory.glob("checkpoint.tmp*"))
    assert not list(workdir.glob(".*.tmp*"))


def test_a_resume_after_a_kill_logs_every_step_once(finished_run, cube_tfrecord_dir, tmp_path):
    """A kill after the logs of steps 5 and 6 but before ckpt-6 was written (simulated: ckpt-6 removed,
    half a metrics row appended): the rerun restores ckpt-4 and logs 5, 6 once more, never twice."""
    from models import checkpoints

    workdir = copy_run(finished_run, tmp_path)
    directory = workdir / "checkpoints"
    for path in checkpoints.checkpoint_files(directory)[6]:
        path.unlink()
    with open(workdir / "metrics.csv", "a") as f:
        f.write("8,0.12")  # an append a kill cut short
    summary, lines = train(tiny_config(gradient_steps=8, **RESUME), cube_tfrecord_dir, workdir)
    assert f"Resuming {workdir} from {directory / 'ckpt-4'} (step 4)." in lines
    assert f"Dropped 2 rows after step 4 from {workdir / 'metrics.csv'}." in lines  # 6 and the cut-short one
    assert f"Dropped 4 rows after step 4 from {workdir / 'eval.csv'}." in lines  # step 6, four budgets
    assert csv_steps(workdir / "metrics.csv") == [2, 4, 6, 8]
    assert csv_steps(workdir / "eval.csv") == [3] * 4 + [6] * 4 + [8] * 4
    # TensorBoard (its reader of tf.summary's tensors): the restart mark drops the killed run's points after 4.
    from tensorboard.backend.event_processing import plugin_event_accumulator

    events = plugin_event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("critic/loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Tensors("eval/success_k1")] == [3, 6, 8]
