"""`python -m pipeline.train --strategy=multi_worker`: two worker processes on 127.0.0.1.

Each test starts real worker processes (TF_CONFIG with free loopback ports), each one the same
command, and stops every process it started by its PID on teardown. The workers train a tiny
config without XLA (MultiWorkerMirroredStrategy turns XLA off for more than one replica), so the
one-process run they are compared with runs without it too: the same random draws per global row.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.common import free_ports

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds for one cluster to start, train and stop on a busy 2-core machine
TINY = ["--env=cube", "--batch_size=32", "--no_progress", "--set", "actor_hidden_dims=16,16",
        "--set", "critic_hidden_dims=16,16", "--set", "jit_compile=false", "--set", "episode_length=5",
        "--set", "log_every=2"]

# train.main in a process that, when it ends, saves every variable of the agent it trained (the
# non-chief's checkpoints are deleted, so this is how a test sees its weights).
WORKER = """
import sys
import numpy as np
from pipeline import train, training

built = []
original = training.TrainingDriver.__init__
def keep_agent(self, agent, strategy):
    built.append(agent)
    original(self, agent, strategy)
training.TrainingDriver.__init__ = keep_agent
try:
    train.main(sys.argv[2:])
finally:
    if built:
        agent = built[0]
        state = {v.path: v.numpy() for v in agent.variables}
        for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
            state.update({optimizer.name + "/" + v.path: v.numpy() for v in optimizer.variables})
        np.savez(sys.argv[1], **state)
"""


class Cluster:
    """Starts processes and remembers them, so the fixture can stop each one by its PID."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.processes = []

    def start(self, name: str, args: list, tf_config=None) -> subprocess.Popen:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(self.tmp_path / f"tmp-{name}")}
        os.makedirs(env["TMPDIR"], exist_ok=True)
        env.pop("TF_CONFIG", None)
        if tf_config is not None:
            env["TF_CONFIG"] = json.dumps(tf_config)
        log = open(self.tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(self.tmp_path / f"{name}.npz"), *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.name = name
        self.processes.append(proc)
        return proc

    def start_workers(self, tag: str, args: list, count: int = 2) -> list:
        ports = free_ports(count)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        return [self.start(f"{tag}-worker{i}", [*args, "--strategy=multi_worker"],
                           {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(count)]

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def wait(self, procs, timeout: float = TIMEOUT) -> list:
        deadline = time.time() + timeout
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"{proc.name} did not finish in {timeout} s:\n" + self.log(proc.name)[-3000:])
        return codes

    def weights(self, name: str) -> dict:
        with np.load(self.tmp_path / f"{name}.npz") as saved:
            return dict(saved)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path)
    yield started
    started.stop()


def csv_steps(path) -> list:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def checkpoint_steps(workdir) -> list:
    from models import checkpoints

    return sorted(checkpoints.checkpoint_files(Path(workdir) / "checkpoints"))


def assert_close(got: dict, want: dict, exact: bool = False):
    assert sorted(got) == sorted(want)
    for name in want:
        if exact:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_two_workers_train_like_one_process_and_only_the_chief_writes(cube_tfrecord_dir, tmp_path, cluster):
    run, single = tmp_path / "run", tmp_path / "single"
    args = [*TINY, f"--data={cube_tfrecord_dir}", "--steps=4", "--checkpoint_every=2", "--eval_episodes=1",
            "--eval_every=0"]
    workers = cluster.start_workers("pair", [*args, f"--workdir={run}"])
    one = cluster.start("single", [*args, f"--workdir={single}"])
    codes = cluster.wait([*workers, one])
    assert codes == [0, 0, 0], cluster.log("pair-worker0")[-3000:] + cluster.log("pair-worker1")[-3000:]

    chief, other = cluster.weights("pair-worker0"), cluster.weights("pair-worker1")
    reference = cluster.weights("single")
    assert_close(chief, other, exact=True)  # every worker applies the same all-reduced update
    assert_close(chief, reference)  # the global batch of one process, split over two
    assert int(chief["sorl_agent/training_steps"]) == int(reference["sorl_agent/training_steps"]) == 4
    # Four updates were applied (so equal weights mean equal updates, not untouched ones).
    assert int(chief["actor_adam/actor_adam/iteration"]) == 4
    assert np.abs(chief["actor_adam/actor_adam/actor_dense_0_kernel_momentum"]).max() > 0

    # The chief wrote what one process writes, once: a non-chief write would add an events file,
    # repeat rows, or leave a second export version.
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*") if "tensorboard" not in p.parts and p.is_file())
    assert names == sorted(str(p.relative_to(single)) for p in single.rglob("*")
                           if "tensorboard" not in p.parts and p.is_file())
    assert len(list((run / "tensorboard").glob("events.out.tfevents*"))) == 1
    assert csv_steps(run / "metrics.csv") == [2, 4] and csv_steps(run / "eval.csv") == [4] * 4
    assert checkpoint_steps(run) == [2, 4] and [p.name for p in (run / "export").iterdir()] == ["1"]
    # The non-chief's own checkpoint saves went to a temporary folder it deleted.
    assert not any((tmp_path / "tmp-pair-worker1").iterdir())
    assert "Training cube-single-play" in cluster.log("pair-worker0")
    assert "Training cube-single-play" not in cluster.log("pair-worker1")

    # The chief's checkpoint restores in one process and training goes on from it there.
    from models import checkpoints

    agent, _, step = checkpoints.load_agent(run)
    assert step == 4
    np.testing.assert_array_equal(agent.actor.weights[0].numpy(), chief["actor/dense_0/kernel"])
    resumed = cluster.start("resumed", [*TINY, f"--data={cube_tfrecord_dir}", f"--workdir={run}", "--steps=6",
                                        "--eval_episodes=0", "--no_export"])
    assert cluster.wait([resumed]) == [0], cluster.log("resumed")[-3000:]
    assert "(step 4)" in cluster.log("resumed") and csv_steps(run / "metrics.csv") == [2, 4, 6]


def wait_for_checkpoint(run: Path, procs, at_least: int, timeout: float = TIMEOUT) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = checkpoint_steps(run)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a worker ended early: {[p.poll() for p in procs]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint >= {at_least} in {timeout} s")


def test_a_killed_pair_resumes_and_a_signal_to_one_worker_stops_both(cube_tfrecord_dir, tmp_path, cluster):
    run = tmp_path / "run"
    args = [*TINY, f"--data={cube_tfrecord_dir}", f"--workdir={run}", "--eval_episodes=0", "--no_export",
            "--steps=100000"]

    # SIGKILL the non-chief mid-run (a lost machine): the chief's next collective fails and it ends
    # with a one-line error.
    first = cluster.start_workers("first", [*args, "--checkpoint_every=3"])
    wait_for_checkpoint(run, first, at_least=3)
    os.kill(first[1].pid, signal.SIGKILL)
    assert cluster.wait(first[:1], timeout=120) == [1]
    last_line = cluster.log("first-worker0").strip().splitlines()[-1]
    assert last_line.startswith(f"train.py: {run}: a worker of the cluster stopped or cannot be reached"), last_line
    assert "start the same command on all of them again" in last_line
    saved, logged = max(checkpoint_steps(run)), max(csv_steps(run / "metrics.csv"), default=0)

    # Both restarted: they resume from the last checkpoint. Then SIGTERM to the non-chief alone: both
    # stop after the same step, which the chief checkpoints.
    second = cluster.start_workers("second", [*args, "--checkpoint_every=100000"])
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and max(csv_steps(run / "metrics.csv"), default=0) <= logged:
        assert all(p.poll() is None for p in second), "a worker ended early"
        time.sleep(0.2)
    second[1].send_signal(signal.SIGTERM)
    assert cluster.wait(second) == [128 + signal.SIGTERM] * 2
    assert f"Resuming {run} from {run / 'checkpoints' / f'ckpt-{saved}'} (step {saved})." in cluster.log("second-worker0")
    stopped = max(checkpoint_steps(run))
    assert stopped > saved
    for name in ("second-worker0", "second-worker1"):
        assert f"stopped by SIGTERM at step {stopped}" in cluster.log(name), cluster.log(name)[-2000:]
    assert f"SIGTERM: stopping after step {stopped}" in cluster.log("second-worker0")
    steps = csv_steps(run / "metrics.csv")
    assert len(steps) == len(set(steps)) and steps[-1] == stopped, steps  # each step logged once
    assert_close(cluster.weights("second-worker0"), cluster.weights("second-worker1"), exact=True)
    assert int(cluster.weights("second-worker0")["sorl_agent/training_steps"]) == stopped


@pytest.mark.parametrize("value, says", [
    (None, "which is not set: set it on every worker, e.g. TF_CONFIG="),
    ("{cluster", "it is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "it needs the fields 'cluster' and 'task'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "'task.index' an entry of it"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "'task.type' must name a list"),
])
def test_a_missing_or_wrong_tf_config_is_a_clear_error(value, says):
    from pipeline import training

    with pytest.raises(training.TrainingError,
                       match="--strategy=multi_worker reads the cluster from the TF_CONFIG") as caught:
        training.check_tf_config(value)
    assert says in str(caught.value)


def test_tf_config_of_this_task_is_accepted():
    from pipeline import training

    value = '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}'
    assert training.check_tf_config(value)["task"] == {"type": "worker", "index": 0}


def test_workers_never_prepare_data(tmp_path):
    from data.errors import DataError
    from pipeline import datasets
    from pipeline.config import DataSpec

    with pytest.raises(DataError, match="the workers of --strategy=multi_worker do not make it"):
        datasets.ensure_dataset(DataSpec(), artifacts=tmp_path, prepare=False)
    assert not any(tmp_path.iterdir())
