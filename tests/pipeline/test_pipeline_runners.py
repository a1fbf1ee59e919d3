"""generate.py and preprocess.py on distributed Beam runners write the DirectRunner's bytes.

Each fixture starts its services as processes on 127.0.0.1 with ephemeral ports, each in its own
process group, with PYTHONPATH set to this checkout so workers import this code; it stops them by
process group id in a `finally`, and fails if anything is still running after STOP_BOUND_S.

    dask_cluster       a Dask scheduler and two single-threaded workers
    portable_services  Beam's Python job service and an external worker pool (the Fn API
                       protocol the Flink and Spark runners use)
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

from data import play_data
from data.errors import DataError
from pipeline import beam_jobs, beam_runners, generate
from pipeline.generate import generate_play_data
from pipeline.preprocess import preprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN = "cube-single-play-v0.npz"
EPISODES, VAL_EPISODES, EPISODE_LENGTH = 3, 1, 20  # 57 + 19 transitions
START_BOUND_S = 120  # services under a loaded 2-core machine
STOP_BOUND_S = 20
TERM_GRACE_S = 3  # then SIGKILL: Dask's graceful shutdown takes longer than these tests need

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # client.run ships this module's functions

# Beam's worker pool servicer (what `python -m apache_beam.runners.worker.worker_pool_main` serves),
# bound to 127.0.0.1 on an ephemeral port written to argv[1].
WORKER_POOL = """
import os, sys, time, grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor
server = grpc.server(thread_pool_executor.shared_unbounded_instance())
port = server.add_insecure_port("127.0.0.1:0")
beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
    BeamFnExternalWorkerPoolServicer(use_process=True), server)
server.start()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(port))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
"""


def _env(path_first=None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env["PATH"] = os.pathsep.join([path_first or os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


class Services:
    """Processes started in their own process groups and stopped by group id."""

    def __init__(self, log_dir: pathlib.Path):
        self.log_dir, self.processes = log_dir, []

    def start(self, name: str, argv: list, env: dict) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log_dir,
                                   start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def wait_for_file(self, path: pathlib.Path) -> str:
        deadline = time.monotonic() + START_BOUND_S
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} not written within {START_BOUND_S} s: {self.logs()}"
            assert all(p.poll() is None for p in self.processes), f"a service exited: {self.logs()}"
            time.sleep(0.2)
        return path.read_text()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in self.log_dir.glob("*.log"))

    def _running(self) -> list:
        for process in self.processes:
            process.poll()  # reaps an exited leader: a zombie keeps its group alive
        return [p for p in self.processes if _group_alive(p.pid)]

    def stop(self) -> None:
        for process in self.processes:
            _signal_group(process.pid, signal.SIGTERM)
        for signal_number, wait_s in ((signal.SIGKILL, TERM_GRACE_S), (None, STOP_BOUND_S - TERM_GRACE_S)):
            deadline = time.monotonic() + wait_s
            while self._running() and time.monotonic() < deadline:
                time.sleep(0.1)
            for process in self._running() if signal_number else ():
                _signal_group(process.pid, signal_number)
        left = [p.args[:3] for p in self._running()]
        assert not left, f"still running {STOP_BOUND_S} s after stopping: {left}"


def _signal_group(pgid: int, signal_number: int) -> None:
    try:
        os.killpg(pgid, signal_number)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def services(tmp_path):
    started = Services(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The DirectRunner's outputs: generated play data and its TFRecord dataset."""
    root = tmp_path_factory.mktemp("direct")
    generate_play_data(env="cube-single", episodes=EPISODES, val_episodes=VAL_EPISODES,
                       episode_length=EPISODE_LENGTH, output_dir=str(root / "generated"), seed=0, progress=False)
    preprocess(f"ogbench:{root / 'generated' / TRAIN}", str(root / "tfrecord"), num_shards=2)
    return root


def _files(directory: pathlib.Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _run_both_jobs_and_compare(reference, out: pathlib.Path, pipeline_args: list) -> None:
    generate_play_data(env="cube-single", episodes=EPISODES, val_episodes=VAL_EPISODES,
                       episode_length=EPISODE_LENGTH, output_dir=str(out / "generated"), seed=0,
                       pipeline_args=pipeline_args, progress=False)
    # The same input file as the reference: metadata.json records its path.
    preprocess(f"ogbench:{reference / 'generated' / TRAIN}", str(out / "tfrecord"), num_shards=2,
               pipeline_args=pipeline_args)
    for name in ("generated", "tfrecord"):
        expected, written = _files(reference / name), _files(out / name)
        assert sorted(written) == sorted(expected)
        assert [n for n in expected if written[n] != expected[n]] == [], f"{name}: bytes differ"


@pytest.fixture
def dask_cluster(services, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    services.start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], _env())
    services.wait_for_file(scheduler_file)
    for index in range(2):
        services.start(f"worker{index}", [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                          str(scheduler_file), "--host", "127.0.0.1", "--nthreads", "1",
                                          "--no-nanny", "--no-dashboard"], _env())
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=START_BOUND_S) as client:
        client.wait_for_workers(2, timeout=START_BOUND_S)
    return json.loads(scheduler_file.read_text())["address"].removeprefix("tcp://")


def _executed_tasks(dask_worker):
    return dask_worker.state.executed_count


def test_dask_cluster_writes_the_direct_runners_bytes_on_both_workers(dask_cluster, reference, tmp_path):
    _run_both_jobs_and_compare(reference, tmp_path, ["--runner=dask", f"--dask_client_address={dask_cluster}"])
    from distributed import Client

    with Client(dask_cluster, timeout=30) as client:
        executed = client.run(_executed_tasks)
    assert len(executed) == 2 and all(count > 0 for count in executed.values()), executed
    assert beam_runners.check_dask_workers(dask_cluster) == 2  # two single-threaded workers
    # Beam's own flags: the runner's full class path and explicit partitions.
    generate_play_data(env="cube-single", episodes=EPISODES, val_episodes=VAL_EPISODES,
                       episode_length=EPISODE_LENGTH, output_dir=str(tmp_path / "plain"), seed=0, progress=False,
                       pipeline_args=["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                                      f"--dask_client_address={dask_cluster}", "--dask_npartitions=2"])
    assert (tmp_path / "plain" / TRAIN).read_bytes() == (reference / "generated" / TRAIN).read_bytes()


def test_dask_partitions_are_a_few_per_worker_thread_and_never_more_than_the_elements():
    dask = ["--runner=dask", "--dask_client_address=127.0.0.1:8786"]
    assert beam_runners.flag_value(beam_runners.runner_args(dask, 100, worker_threads=2), "dask_npartitions") == "8"
    assert beam_runners.flag_value(beam_runners.runner_args(dask, 3, worker_threads=2), "dask_npartitions") == "3"
    # A runner-made cluster (no address): its size is unknown, so one partition per element.
    assert beam_runners.flag_value(beam_runners.runner_args(dask, 100), "dask_npartitions") == "100"
    assert beam_runners.flag_value(beam_runners.runner_args(dask, 5000), "dask_npartitions") == "1024"
    # The user's own choice stays.
    mine = beam_runners.runner_args(dask + ["--dask_npartitions=2"], 100, worker_threads=2)
    assert beam_runners.flag_value(mine, "dask_npartitions") == "2" and sum("npartitions" in a for a in mine) == 1


def test_dask_scheduler_that_is_not_there_fails_in_one_line(tmp_path):
    with pytest.raises(DataError, match=r"--dask_client_address=127\.0\.0\.1:1: no Dask scheduler answers"):
        beam_jobs.run_pipeline(lambda pipeline: None, ["--runner=dask", "--dask_client_address=127.0.0.1:1",
                                                      "--dask_connection_timeout=2"])


def _worker_pool(services, tmp_path, path_first=None) -> str:
    port_file = tmp_path / f"pool-{len(services.processes)}.port"
    services.start(f"pool{len(services.processes)}", [sys.executable, "-c", WORKER_POOL, str(port_file)],
                   _env(path_first))
    return f"localhost:{services.wait_for_file(port_file)}"


@pytest.fixture
def portable_services(services, tmp_path):
    port_file = tmp_path / "job_service.port"
    services.start("job_service", [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                   "--port=0", f"--port_file={port_file}"], _env())
    job_endpoint = f"localhost:{services.wait_for_file(port_file)}"
    return job_endpoint, _worker_pool(services, tmp_path)


def test_portable_job_service_and_worker_pool_write_the_direct_runners_bytes(portable_services, reference, tmp_path):
    job_endpoint, pool = portable_services
    _run_both_jobs_and_compare(reference, tmp_path, ["--runner=portable", f"--job_endpoint={job_endpoint}",
                                                     f"--environment_config={pool}"])


def test_worker_pool_whose_python_lacks_beam_fails_fast_in_one_line(services, tmp_path, monkeypatch, capsys):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text("#!/bin/sh\nexit 1\n")  # dies at once, as a python without Beam does
    (fake_bin / "python").chmod(0o755)
    pool = _worker_pool(services, tmp_path, path_first=str(fake_bin))
    monkeypatch.setattr("pipeline.beam_runners.WORKER_POOL_TIMEOUT_S", 10.0)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--episodes=1", "--val_episodes=1", "--episode_length=20", f"--output={tmp_path / 'out'}",
                       "--no_progress", "--runner=portable", f"--environment_config={pool}"])
    message = str(exit_info.value)
    assert message.startswith(f"generate.py: --environment_config={pool}: the pool's worker did not connect")
    assert "\n" not in message and "lacks apache_beam" in message
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "out").glob(".generate-resume-*"))


def test_killed_driver_leaves_no_workers_and_the_next_run_resumes_from_its_episodes(tmp_path, monkeypatch):
    """SIGKILL to a DirectRunner multi_processing driver: its SDK worker processes exit when the
    control channel drops; the same command again rolls out only the episodes it had not finished."""
    out = tmp_path / "out"
    arguments = dict(episodes=8, val_episodes=1, episode_length=500)
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.generate", *(f"--{key}={value}" for key, value in arguments.items()),
         f"--output={out}", "--no_progress", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        env=_env(), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    episodes = out / ".generate-resume-cube-single-play-seed0-len500" / "episodes"
    try:
        deadline = time.monotonic() + START_BOUND_S
        while not list(episodes.glob("*.npz")):
            assert driver.poll() is None and time.monotonic() < deadline, "no episode written while running"
            time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-g", str(driver.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) > 1  # the driver and its worker processes
        driver.kill()
        driver.wait(timeout=STOP_BOUND_S)
        deadline = time.monotonic() + STOP_BOUND_S
        while _group_alive(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(driver.pid), "worker processes outlived the killed driver"
    finally:
        _signal_group(driver.pid, signal.SIGKILL)
    assert not (out / TRAIN).exists()
    kept = {path.stem for path in episodes.glob("*.npz")}
    rolled = []
    real_rollout = play_data.rollout_episode
    monkeypatch.setattr(play_data, "rollout_episode",
                        lambda env, family, task: rolled.append(task.name) or real_rollout(env, family, task))
    generate_play_data(env="cube-single", output_dir=str(out), progress=False, **arguments)
    everything = {f"train-{i:06d}" for i in range(8)} | {"val-000000"}
    assert kept and sorted(rolled) == sorted(everything - kept)
    assert sorted(os.listdir(out)) == ["cube-single-play-v0-val.npz", TRAIN]
