"""Generation and conversion throughput on a local Dask cluster (1 and 2 workers) against the DirectRunner.

    python -m bench.bench_beam_runners [--episodes=8 --episode_length=301 --num_shards=4 --repeats=3]

Starts a Dask scheduler and single-threaded workers on 127.0.0.1 (PYTHONPATH = this checkout),
runs pipeline/generate.py and pipeline/preprocess.py through their library calls, and prints one
markdown row per (job, runner): | job | runner | median | unit | runs |. Wall clock of the whole
job, Beam start-up included; generate counts environment rows, preprocess transitions.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from pipeline.generate import generate_play_data
from pipeline.preprocess import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start_cluster(workers: int, scratch: str) -> tuple:
    env = dict(os.environ, PYTHONPATH=REPO)
    scheduler_file = os.path.join(scratch, f"scheduler-{workers}.json")
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", "0", "--no-dashboard", "--scheduler-file", scheduler_file],
                                  env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)]
    while not os.path.exists(scheduler_file):
        time.sleep(0.2)
    for _ in range(workers):
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", scheduler_file, "--host",
             "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(scheduler_file=scheduler_file, timeout=120) as client:
        client.wait_for_workers(workers, timeout=120)
    with open(scheduler_file) as handle:
        address = json.load(handle)["address"].removeprefix("tcp://")
    return address, processes


def _stop(processes) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--episode_length", type=int, default=301)
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="bench-beam-runners-")
    rows = (args.episodes + 1) * args.episode_length
    settings = [("DirectRunner (in-process)", None, [])] + [(f"Dask, {n} worker{'s' * (n > 1)}", n, None)
                                                           for n in (1, 2)]
    try:
        for name, workers, pipeline_args in settings:
            processes = []
            if workers:
                address, processes = _start_cluster(workers, scratch)
                pipeline_args = ["--runner=dask", f"--dask_client_address={address}"]
            try:
                results = {"generate": [], "preprocess": []}
                for repeat in range(args.repeats):
                    out = os.path.join(scratch, f"{workers}-{repeat}")
                    started = time.monotonic()
                    train, _ = generate_play_data(env="cube-single", episodes=args.episodes, val_episodes=1,
                                                  episode_length=args.episode_length, output_dir=out, seed=0,
                                                  pipeline_args=pipeline_args, progress=False)
                    results["generate"].append(rows / (time.monotonic() - started))
                    started = time.monotonic()
                    metadata = preprocess(f"ogbench:{train}", os.path.join(out, "tfrecord"),
                                          num_shards=args.num_shards, pipeline_args=pipeline_args)
                    transitions = sum(metadata["counts"].values())
                    results["preprocess"].append(transitions / (time.monotonic() - started))
                for job, values in results.items():
                    unit = "env rows/s" if job == "generate" else "transitions/s"
                    runs = ", ".join(f"{v:.0f}" for v in values)
                    print(f"| {job} | {name} | {statistics.median(values):.0f} | {unit} | {runs} |", flush=True)
            finally:
                _stop(processes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
