"""Runner-specific options and start-up checks for the two Beam jobs (generate.py, preprocess.py).

- `runner_args` expands two shorthands and adds what a runner needs to spread the work; plain
  Beam flags pass through unchanged:
    --runner=dask      Beam's Dask runner (`apache_beam.runners.dask.dask_runner.DaskRunner`),
                       with --dask_npartitions set to PARTITIONS_PER_WORKER per worker thread of
                       the cluster (at most one per element). Beam's default puts up to 128
                       elements in one partition, so one worker would do it all; one partition
                       per element would run each DoFn's setup (the generator's MuJoCo env) once
                       per element, since the Dask runner sets DoFns up once per partition.
    --runner=portable  PortableRunner; --job_endpoint defaults to 'embed' (a job service inside
                       the driver) and --environment_type to EXTERNAL when --environment_config
                       names a worker pool, else LOOPBACK.
- `check_workers` fails fast, in one line, where a job would otherwise hang or fail per element:
  Dask workers (and the scheduler) that cannot import this project, and an external worker pool
  whose `python` cannot start Beam's SDK harness (the pool runs the `python` first on its PATH; a
  worker that cannot import apache_beam dies unseen and the job waits for it forever).

Only Create | Reshuffle | ParDo with one output, consumed once, and files written by the DoFns
themselves run correctly on every runner here (the Dask runner drops tagged outputs, computes
only the last branch, loses finish_bundle output and mishandles Beam's file sinks and sources);
tests/pipeline/test_pipeline_beam_graphs.py holds both jobs to that.
"""

import socket
import threading
import uuid

from data.errors import DataError

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
PORTABLE_RUNNERS = ("portablerunner", "flinkrunner", "sparkrunner")
MAX_DASK_PARTITIONS = 1024  # past this, scheduling overhead outgrows the gain of finer partitions
PARTITIONS_PER_WORKER = 4  # enough to even out elements of unequal cost, few enough DoFn set-ups
WORKER_POOL_TIMEOUT_S = 120.0  # a probe worker's start-up: python, then importing Beam's SDK harness
PROJECT_MODULE = "pipeline.beam_jobs"  # what workers unpickle the DoFns from


def flag_value(args, name: str):
    """The value of --NAME in Beam-style args ('--name=v' or '--name v'), the last one given; None if absent."""
    value = None
    for index, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and index + 1 < len(args):
            value = args[index + 1]
    return value


def _without_flag(args, name: str) -> list:
    kept, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg.startswith(f"--{name}="):
            continue
        elif arg == f"--{name}":
            skip = index + 1 < len(args)
        else:
            kept.append(arg)
    return kept


def runner_kind(args) -> str:
    """'dask', 'portable' (PortableRunner, Flink, Spark), or the lower-cased --runner (default 'directrunner')."""
    runner = (flag_value(args, "runner") or "DirectRunner").lower()
    if runner in ("dask", "daskrunner", DASK_RUNNER.lower()):
        return "dask"
    if runner == "portable" or runner.rsplit(".", 1)[-1] in PORTABLE_RUNNERS:
        return "portable"
    return runner


def dask_partitions(elements: int, worker_threads: int | None) -> int:
    """Partitions for `elements` elements on a cluster of `worker_threads` (None: unknown)."""
    wanted = int(elements) if not worker_threads else PARTITIONS_PER_WORKER * int(worker_threads)
    return max(1, min(int(elements), wanted, MAX_DASK_PARTITIONS))


def runner_args(args, elements: int | None = None, worker_threads: int | None = None) -> list:
    """Beam args with the --runner shorthands expanded and Dask partitions set (see module doc);
    `worker_threads` is what `check_workers` found on the Dask cluster."""
    args = list(args)
    runner = (flag_value(args, "runner") or "").lower()
    if runner in ("dask", "daskrunner"):
        args = _without_flag(args, "runner") + [f"--runner={DASK_RUNNER}"]
    if runner_kind(args) == "dask" and elements and not (flag_value(args, "dask_npartitions")
                                                         or flag_value(args, "dask_partition_size")):
        args.append(f"--dask_npartitions={dask_partitions(elements, worker_threads)}")
    if runner == "portable":
        args = _without_flag(args, "runner") + ["--runner=PortableRunner"]
        if flag_value(args, "job_endpoint") is None:
            args.append("--job_endpoint=embed")
        if flag_value(args, "environment_type") is None:
            args.append("--environment_type=" + ("EXTERNAL" if flag_value(args, "environment_config") else "LOOPBACK"))
    return args


def check_workers(args) -> int | None:
    """DataError now, in one line, if the runner's workers cannot run the jobs (see module doc).
    Returns the Dask cluster's worker threads (None for other runners or a runner-made cluster)."""
    kind = runner_kind(args)
    if kind == "dask":
        return check_dask_workers(flag_value(args, "dask_client_address"), flag_value(args, "dask_scheduler_file"),
                           float(flag_value(args, "dask_connection_timeout") or 30))
    elif kind == "portable" and (flag_value(args, "environment_type") or "").upper() == "EXTERNAL":
        address = flag_value(args, "environment_config")
        if not address:
            raise DataError("--environment_type=EXTERNAL: also pass --environment_config=HOST:PORT, the worker "
                            "pool's address.")
        check_worker_pool(address)
    return None


def check_dask_workers(address: str | None, scheduler_file: str | None = None, timeout_s: float = 30) -> int | None:
    """The scheduler and every worker import this project (DoFns are pickled by reference);
    returns the cluster's worker threads."""
    if not address and not scheduler_file:
        return None  # the runner starts a LocalCluster in this environment
    from distributed import Client

    where = f"--dask_client_address={address}" if address else f"--dask_scheduler_file={scheduler_file}"
    try:
        client = Client(address, scheduler_file=scheduler_file, timeout=timeout_s)
    except (OSError, TimeoutError, ValueError) as error:
        raise DataError(f"{where}: no Dask scheduler answers there ({error}); start one with "
                        f"`dask scheduler` or fix the address.") from None
    statement = f"import {PROJECT_MODULE}"
    try:
        workers = client.scheduler_info()["workers"]
        if not workers:
            raise DataError(f"{where}: the Dask scheduler has no workers; start some with `dask worker "
                            f"{address or '--scheduler-file ' + scheduler_file}`.")
        try:
            client.run_on_scheduler(exec, statement, {})
            client.run(exec, statement, {})
        except ImportError as error:
            raise DataError(f"{where}: a Dask scheduler or worker cannot import this project ({error}); install "
                            f"it there (pip install -r requirements.txt) or start them with PYTHONPATH set to "
                            f"this checkout.") from None
        return sum(int(worker.get("nthreads") or 1) for worker in workers.values())
    finally:
        client.close()


def _probe_control_server(pool_host: str):
    """A Fn API control service whose only job is to notice that a worker connected."""
    import grpc
    from concurrent import futures

    from apache_beam.portability.api import beam_fn_api_pb2_grpc

    connected = threading.Event()

    class Control(beam_fn_api_pb2_grpc.BeamFnControlServicer):
        def Control(self, request_iterator, context):
            connected.set()
            return iter(())  # no work: the probe worker's stream ends and it exits

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(Control(), server)
    local = pool_host in ("localhost", "127.0.0.1", "::1", "[::1]")
    port = server.add_insecure_port("127.0.0.1:0" if local else "[::]:0")
    server.start()
    return server, connected, f"{'localhost' if local else socket.getfqdn()}:{port}"


def check_worker_pool(address: str, timeout_s: float | None = None) -> None:
    """Asks the external worker pool at `address` to start one worker and waits for it to connect.

    Raises DataError when no pool answers, or when its worker does not connect within `timeout_s`
    (default WORKER_POOL_TIMEOUT_S; its `python` lacks Beam, or cannot reach this machine).
    """
    import grpc

    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

    timeout_s = WORKER_POOL_TIMEOUT_S if timeout_s is None else timeout_s
    flag = f"--environment_config={address}"
    host = address.rsplit(":", 1)[0]
    server, connected, control_url = _probe_control_server(host)
    channel = grpc.insecure_channel(address)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            raise DataError(f"{flag}: no worker pool answers there; start one with `python -m "
                            f"apache_beam.runners.worker.worker_pool_main --service_port=PORT`.") from None
        pool = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
        worker_id = f"sorl-probe-{uuid.uuid4().hex[:8]}"
        response = pool.StartWorker(beam_fn_api_pb2.StartWorkerRequest(
            worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control_url)), timeout=30)
        if response.error:
            raise DataError(f"{flag}: the worker pool could not start a worker: "
                            f"{response.error.strip().splitlines()[-1]}")
        started = connected.wait(timeout_s)
        pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id=worker_id), timeout=30)
        if not started:
            raise DataError(f"{flag}: the pool's worker did not connect within {timeout_s:.0f} s: the `python` first "
                            f"on the pool's PATH probably lacks apache_beam. Start the pool with this project's "
                            f"environment first on PATH: PATH=/path/to/.venv/bin:$PATH python -m "
                            f"apache_beam.runners.worker.worker_pool_main --service_port=PORT")
    finally:
        channel.close()
        server.stop(0)
