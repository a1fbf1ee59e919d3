"""End to end: `python pipeline/train.py` trains, evaluates, checkpoints, resumes and exports."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "pipeline" / "train.py"
# Small networks and short evaluation episodes: the full pipeline in seconds, not the paper's scale.
TINY = [
    "--set", "actor_hidden_dims=32,32", "--set", "critic_hidden_dims=32,32", "--set", "episode_length=30",
    "--set", "log_every=5", "--batch_size=32", "--eval_episodes=2", "--no_progress",
]
NO_XLA = ["--set", "jit_compile=false"]  # XLA compiles for ~45 s on a busy CI core; the first test keeps it on


def run_train(data_dir, workdir, *extra, check=True, **kw):
    cmd = [sys.executable, str(TRAIN), "--env=cube", f"--data={data_dir}", f"--workdir={workdir}", *TINY, *extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tensorboard_tags(logdir: Path) -> set:
    from tensorboard.backend.event_processing import event_accumulator

    tags = set()
    for events in logdir.rglob("events.out.tfevents*"):
        acc = event_accumulator.EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    return tags


def test_train_evaluates_checkpoints_exports_then_resumes(cube_tfrecord_dir, tmp_path):
    workdir = tmp_path / "run"
    first = run_train(cube_tfrecord_dir, workdir, "--steps=10", "--eval_every=10", "--checkpoint_every=5")
    assert "Training cube-single-play task 2" in first.stdout

    config = json.loads((workdir / "config.json").read_text())
    assert config["config"]["q_loss_coef"] == 10.0 and config["config"]["discount"] == 0.99
    assert config["obs_dim"] == 28 and config["action_dim"] == 5

    rows = list(csv.DictReader(open(workdir / "eval.csv")))
    assert [(int(r["step"]), int(r["steps_k"])) for r in rows] == [(10, 1), (10, 2), (10, 4), (10, 8)]
    for r in rows:
        assert 0.0 <= float(r["success_rate"]) <= 1.0 and int(r["episodes"]) == 2
    assert (workdir / "learning_curve.png").stat().st_size > 1000

    tags = tensorboard_tags(workdir / "tensorboard")
    for tag in ("critic/loss", "actor/fm_loss", "actor/sc_loss", "actor/q_loss", "val/critic/loss",
                "eval/success_k1", "eval/success_k8", "perf/steps_per_second"):
        assert tag in tags, f"{tag} missing from TensorBoard; have {sorted(tags)}"

    export_versions = [p.name for p in (workdir / "export").iterdir()]
    assert export_versions == ["1"] and (workdir / "export" / "1" / "saved_model.pb").exists()

    second = run_train(cube_tfrecord_dir, workdir, "--steps=15", "--eval_every=10", "--checkpoint_every=5")
    assert "Resuming" in second.stdout and "(step 10)" in second.stdout
    steps = [int(line.split(",")[0]) for line in open(workdir / "metrics.csv").read().splitlines()[1:]]
    assert steps == [5, 10, 15], "a resumed run continues the step count instead of starting over"
    assert sorted(p.name for p in (workdir / "export").iterdir()) == ["1", "2"]


def test_resume_refuses_other_agent_settings(cube_tfrecord_dir, tmp_path):
    workdir = tmp_path / "run"
    run_train(cube_tfrecord_dir, workdir, "--steps=5", "--eval_episodes=0", "--no_export", *NO_XLA)
    proc = run_train(cube_tfrecord_dir, workdir, "--steps=10", "--eval_episodes=0", "--set", "q_loss_coef=50",
                     *NO_XLA, check=False)
    assert proc.returncode != 0
    assert "q_loss_coef: saved 10.0 vs now 50.0" in proc.stderr and "--workdir" in proc.stderr


def test_kill_loses_at_most_the_steps_since_the_last_checkpoint(cube_tfrecord_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, str(TRAIN), "--env=cube", f"--data={cube_tfrecord_dir}", f"--workdir={workdir}", *TINY,
           "--steps=100000", "--eval_episodes=0", "--checkpoint_every=5", "--no_export", *NO_XLA]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((workdir / "checkpoints").glob("ckpt-1[05].index")):
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up, like a preempted machine
    finally:
        proc.wait()
    saved = max(int(p.name.split("-")[1].split(".")[0]) for p in (workdir / "checkpoints").glob("ckpt-*.index"))
    assert saved >= 10
    resumed = run_train(cube_tfrecord_dir, workdir, f"--steps={saved + 5}", "--eval_episodes=0", "--no_export",
                        *NO_XLA)
    assert f"(step {saved})" in resumed.stdout


def test_sigterm_checkpoints_the_step_in_flight_and_the_rerun_resumes_there(cube_tfrecord_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, str(TRAIN), "--env=cube", f"--data={cube_tfrecord_dir}", f"--workdir={workdir}", *TINY,
           "--steps=100000", "--eval_episodes=0", "--checkpoint_every=100000", "--no_export", *NO_XLA]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (workdir / "metrics.csv").exists():
            time.sleep(0.2)
        time.sleep(0.5)  # somewhere inside a logging window, most likely not on its boundary
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM: stopping after step" in stdout
    # No checkpoint was due (checkpoint_every=100000): the one there is the stop's own.
    saved = [int(p.name.split("-")[1].split(".")[0]) for p in (workdir / "checkpoints").glob("ckpt-*.index")]
    assert len(saved) == 1 and saved[0] >= 5
    assert f"stopped by SIGTERM at step {saved[0]}" in stderr and "Rerun the same command" in stderr
    # Progress lines without a bar: step, rate, ETA and losses every log_every steps.
    assert "step 5/100000 (0.0%)" in stdout and "steps/s ETA" in stdout and "critic/loss=" in stdout

    target = (saved[0] // 5 + 2) * 5  # the next log boundary but one
    resumed = run_train(cube_tfrecord_dir, workdir, f"--steps={target}", "--eval_episodes=0", "--no_export",
                        "--checkpoint_every=100000", *NO_XLA)
    assert f"(step {saved[0]})" in resumed.stdout
    steps = [int(line.split(",")[0]) for line in open(workdir / "metrics.csv").read().splitlines()[1:]]
    assert steps[-2:] == [target - 5, target] and saved[0] in steps, steps  # back on the log grid


def test_unknown_config_key_is_a_clear_error(cube_tfrecord_dir, tmp_path):
    proc = run_train(cube_tfrecord_dir, tmp_path / "run", "--steps=5", "--set", "q_los_coef=3", check=False)
    assert proc.returncode != 0 and "q_los_coef" in proc.stderr


def test_data_of_another_env_is_refused_before_training(cube_tfrecord_dir, tmp_path):
    # cube-single data with --env=scene: the agent would be evaluated in another env than its data.
    proc = run_train(cube_tfrecord_dir, tmp_path / "run", "--steps=5", "--env=scene", check=False)
    assert proc.returncode != 0
    assert f"{cube_tfrecord_dir / 'metadata.json'}: field 'env' is 'cube-single-play'" in proc.stderr
    assert "'scene-play'" in proc.stderr and "--env=cube-single-play" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_data_without_the_tasks_rewards_is_refused(tmp_path):
    from models.config import get_config
    from pipeline import training

    config = get_config("cube", ["task=3"])
    with pytest.raises(training.TrainingError) as error:  # a Minari dataset's own rewards only
        training.check_dataset_matches(config, tmp_path, {"reward_keys": ["default"], "env": None})
    assert f"{tmp_path / 'metadata.json'}: field 'reward_keys' is ['default'], with no 'task3'" in str(error.value)
    assert "preprocess.py --env=FAMILY" in str(error.value)
    with pytest.raises(training.TrainingError, match=r"pick --task from \[1, 2\]"):
        training.check_dataset_matches(config, tmp_path, {"reward_keys": ["task1", "task2"],
                                                           "env": "cube-single-play"})
    training.check_dataset_matches(config, tmp_path, {"reward_keys": ["task3"], "env": "cube-single-play"})


def test_validation_batches_are_the_val_split_with_autotuning_off(cube_tfrecord_dir):
    # Keras makes a new validation iterator at every log boundary; dropping the old one with tf.data's
    # autotuning on waits out the tuning thread's sleep (stalls of about 31 s, idle CPU: BENCHMARKS.md).
    import numpy as np
    from data import reader
    from models.config import get_config
    from pipeline import training

    config = get_config("cube", ["batch_size=32", "seed=3"])
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


def test_non_finite_loss_stops_training_and_keeps_the_checkpoint(tmp_path):
    import numpy as np
    import tensorflow as tf
    from pipeline.training import TrainingMonitor
    from models.config import get_config

    config = get_config("cube", ["steps=10", "log_every=5"])
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "ckpt"), max_to_keep=2)
    manager.save(checkpoint_number=5)

    class Model:
        stop_training = False

    monitor = TrainingMonitor(config, tmp_path, manager, start_step=5, evaluate=None, show_progress=False)
    monitor.set_model(Model())
    monitor.on_train_batch_end(0, {"critic/loss": np.float32(1.0), "actor/loss": np.float32(np.nan)})
    assert monitor.model.stop_training
    assert "non-finite loss at step 6: actor/loss=nan" in monitor.failure and "ckpt-5" in monitor.failure
    monitor.on_epoch_end(0, {"critic/loss": 1.0})
    assert manager.latest_checkpoint.endswith("ckpt-5"), "no checkpoint is written after a non-finite loss"


MIRRORED_SCRIPT = """
import sys, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models.config import get_config
from pipeline import training
config = get_config("cube", ["steps=5", "log_every=5", "eval_episodes=0", "batch_size=32",
                              "actor_hidden_dims=32,32", "critic_hidden_dims=32,32", "jit_compile=false"])
summary = training.run_training(config, {data!r}, {workdir!r}, strategy_name="mirrored", export=False,
                                show_progress=False)
print(json.dumps({{"replicas": training.make_strategy("mirrored").num_replicas_in_sync, **summary}}))
"""


def test_mirrored_strategy_trains_on_two_logical_cpus(cube_tfrecord_dir, tmp_path):
    script = MIRRORED_SCRIPT.format(data=str(cube_tfrecord_dir), workdir=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2 and summary["step"] == 5
