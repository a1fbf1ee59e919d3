"""End to end: `python -m pipeline.train` trains, evaluates, checkpoints, resumes and exports."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "pipeline.train"]  # run from ROOT: the project's packages import from there
# Small networks and short evaluation episodes: the full pipeline in seconds, not the paper's scale.
TINY = [
    "--set", "actor_hidden_dims=32,32", "--set", "critic_hidden_dims=32,32", "--set", "episode_length=30",
    "--set", "log_every=5", "--batch_size=32", "--eval_episodes=2", "--no_progress",
]
NO_XLA = ["--set", "jit_compile=false"]  # XLA compilation is slow on a busy CI core; the first test keeps it on


def run_train(data_dir, workdir, *extra, check=True, **kw):
    cmd = [*TRAIN, "--env=cube", f"--data={data_dir}", f"--workdir={workdir}", *TINY, *extra]
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

    from pipeline.config import load_run_config

    config, obs_dim, action_dim, _ = load_run_config(workdir)
    assert config.agent.q_loss_coef == 10.0 and config.agent.discount == 0.99
    assert obs_dim == 28 and action_dim == 5

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
    cmd = [*TRAIN, "--env=cube", f"--data={cube_tfrecord_dir}", f"--workdir={workdir}", *TINY,
           "--steps=100000", "--eval_episodes=0", "--checkpoint_every=5", "--no_export", *NO_XLA]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        # Any checkpoint from step 10 on: a fast run keeps only the newest three (max_to_keep).
        while time.time() < deadline and not any(
                int(p.name.split("-")[1].split(".")[0]) >= 10 for p in (workdir / "checkpoints").glob("ckpt-*.index")):
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up, like a preempted machine
    finally:
        proc.wait()
    saved = max(int(p.name.split("-")[1].split(".")[0]) for p in (workdir / "checkpoints").glob("ckpt-*.index"))
    assert saved >= 10
    resumed = run_train(cube_tfrecord_dir, workdir, f"--steps={saved + 5}", "--eval_episodes=0", "--no_export",
                        *NO_XLA)
    assert f"(step {saved})" in resumed.stdout
    steps = [int(line.split(",")[0]) for line in open(workdir / "metrics.csv").read().splitlines()[1:]]
    assert len(steps) == len(set(steps)) and steps[-1] == saved + 5, "a step the killed run logged is logged once"


def test_sigterm_checkpoints_the_step_in_flight_and_the_rerun_resumes_there(cube_tfrecord_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = [*TRAIN, "--env=cube", f"--data={cube_tfrecord_dir}", f"--workdir={workdir}", *TINY,
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


def test_bad_settings_are_one_line_errors_without_a_traceback(cube_tfrecord_dir, tmp_path):
    proc = run_train(cube_tfrecord_dir, tmp_path / "run", "--steps=-3", "--set", "discount=1", "--set", "log_every=0",
                     check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # TF's own start-up lines may come first on stderr; ours is one line, the last.
    assert [line for line in proc.stderr.splitlines() if line.startswith("train.py:")] == [
        "train.py: Invalid AgentConfig: discount=1.0 must be a number in [0, 1); Invalid Schedule: "
        "gradient_steps=-3 must be an integer >= 1; log_every=0 must be an integer >= 1."]
    assert proc.stderr.strip().splitlines()[-1].startswith("train.py: Invalid AgentConfig")
    proc = run_train(cube_tfrecord_dir, tmp_path / "run", "--steps=ten", check=False)
    assert proc.returncode == 2 and "argument --steps: 'ten' is not an integer" in proc.stderr
    assert not (tmp_path / "run").exists()


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
