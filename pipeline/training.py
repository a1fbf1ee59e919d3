"""The SORL training loop: build the agent under a strategy, restore or start, train, checkpoint, export.

`pipeline/train.py` parses flags, prepares the data (pipeline/datasets.py) and calls `run_training`;
tests call it too. One driver serves every strategy (default, mirrored, tpu, multi_worker):
`TrainingDriver` runs the agent's own `train_step` on every replica through `strategy.run`, each
replica on its rows of the same global batch (`distribute_batches`), so a distributed step equals
the single-device step. The loop calls the callbacks of pipeline/callbacks.py with Keras' callback
protocol: its "epochs" are log windows that end at every multiple of `schedule.log_every` and at
`gradient_steps` (the last window may be shorter). Metrics and validation are logged at window ends;
checkpoints and evaluations happen at the exact multiples of their own periods, so no period has
to divide another. SIGINT or SIGTERM stops the run after the step in flight with a checkpoint of that
step (pipeline/interrupts.py); the rerun resumes there.

Several workers (multi_worker, one process per worker, configured by TF_CONFIG): every decision that
changes which collective runs next (stop, non-finite loss, checkpoint) is taken from values all
workers share (the all-reduced losses, the agreed stop signal, the step count), so no worker waits
on a collective the others skip. The chief alone writes the run directory (config.json, checkpoints,
metrics.csv, eval.csv, TensorBoard, the export) and alone evaluates; the others join every
checkpoint save (MultiWorkerMirroredStrategy requires it) into a temporary folder outside the run
directory, deleted at the end. Every worker reads the run directory, so it must be the same path on
all of them (a shared file system); a resume checks that every worker restored the same step.

A rerun over an existing run directory (its config.json) resumes from the newest checkpoint that
restores, skipping (and moving to checkpoints/damaged/) newer ones that do not; it refuses to start
when none restores, and never rewrites config.json. It deletes what a killed save left behind and
the metrics.csv / eval.csv rows after the restored step, so every step is logged once.
A resumed run marks its restart in TensorBoard (run_logs.mark_start), which then drops the points
logged after the restored step by the killed run, so those steps are shown once there too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import tensorflow as tf

from data import files, reader
from models import checkpoints
from pipeline import callbacks, interrupts, run_logs
from pipeline import config as run_config
from pipeline.interrupts import TrainingInterrupted

EVAL_SEED_OFFSET = 1_000_000  # evaluation seed = agent seed + this: the same episodes at every evaluation
STRATEGIES = ("default", "mirrored", "tpu", "multi_worker")
# What the collectives of a worker raise when another worker died (multi_worker).
PEER_LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
             tf.errors.DeadlineExceededError)
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says why and what to do."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs, or CPUs if configured), `tpu`, or
    `multi_worker` (MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG variable)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"--strategy={name!r} is not one of: {', '.join(STRATEGIES)}")


def check_tf_config(text: Optional[str]) -> dict:
    """TF_CONFIG parsed, or TrainingError saying what is wrong with it and what it should hold."""
    where = "--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable"
    if not text:
        raise TrainingError(f"{where}, which is not set: set it on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
                            "with that worker's index (README, \"Training on several machines\").")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingError(f"{where}; it is not valid JSON ({error}): {text[:200]!r}. "
                            f"Expected e.g. {TF_CONFIG_EXAMPLE}.") from None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    task = value.get("task") if isinstance(value, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise TrainingError(f"{where}; it needs the fields 'cluster' and 'task', got {text[:200]!r}. "
                            f"Expected e.g. {TF_CONFIG_EXAMPLE}.")
    members = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise TrainingError(f"{where}; its task {task} is not in its cluster {cluster}: 'task.type' must name a "
                            "list of 'cluster' (worker or chief) and 'task.index' an entry of it.")
    return value


def log_windows(start: int, total: int, log_every: int) -> list[tuple[int, int, int]]:
    """The log windows from gradient step `start` to `total`: (first step, steps per window, windows).

    Windows end at every multiple of log_every and at total: a resume off the log grid (after a
    stop) first runs one short window back onto it, and a total off the grid ends with a short one.
    """
    calls, step = [], start
    if step % log_every and step < total:
        end = min(step - step % log_every + log_every, total)
        calls.append((step, end - step, 1))
        step = end
    full = (total - step) // log_every
    if full > 0:
        calls.append((step, log_every, full))
        step += full * log_every
    if step < total:
        calls.append((step, total - step, 1))
    return calls


def validation_dataset(data_dir, config) -> tf.data.Dataset:
    """The validation split as the loop evaluates it at every log boundary, with tf.data's autotuning off.

    The loop makes a new validation iterator at each evaluation (the same batches every time), and
    with autotuning on, dropping the old one waits for the autotune thread (BENCHMARKS.md); a few
    in-memory batches need no tuning.
    """
    dataset = reader.make_dataset(str(data_dir), split="val", task=config.data.reward_key,
                                  batch_size=config.agent.batch_size, seed=config.agent.seed)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def distribute_batches(strategy: tf.distribute.Strategy, make_dataset: Callable[[], tf.data.Dataset],
                       global_batch_size: int):
    """`make_dataset()`'s global batches split over the replicas: replica r gets rows
    [r * B / R, (r + 1) * B / R) of every batch, the rows the agent draws its random inputs for
    (SORLAgent.draw_inputs), so a distributed step sees what one device sees.

    Every input pipeline (one per worker) builds the same global batches and keeps its replicas'
    rows: no file sharding, so the batches do not depend on the number of workers.
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = make_dataset()
        replicas = context.num_replicas_in_sync
        if replicas == 1:
            return dataset
        local = context.get_per_replica_batch_size(global_batch_size)
        per_pipeline = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * per_pipeline

        def this_pipelines_rows(batch):
            return {key: tf.reshape(value, [replicas, local, *value.shape[1:]])[first:first + per_pipeline]
                    for key, value in batch.items()}

        # One element per local replica, in replica order (the strategy hands them out in turn).
        return dataset.map(this_pipelines_rows).unbatch()

    return strategy.distribute_datasets_from_function(dataset_fn)


class TrainingDriver:
    """The agent's `train_step` / `test_step` on every replica of `strategy`, one global batch per call.

    The per-replica step is XLA-compiled when the agent was compiled with jit_compile (one replica:
    SORLAgent.compile turns it off for more); the all-reduce of the logs and of the stop signal stays
    outside it (XLA cannot compile CPU collectives). Logs are the replicas' mean, the stop signal
    (a signal number, 0 for none) their maximum: every worker gets the same numbers back.
    """

    def __init__(self, agent: SORLAgent, strategy: tf.distribute.Strategy):
        self.agent = agent
        self.strategy = strategy
        train_step, test_step = agent.train_step, agent.test_step
        if agent.jit_compile:  # a nested tf.function may not hold the merge_calls of several replicas
            train_step = tf.function(train_step, jit_compile=True)
            test_step = tf.function(test_step, jit_compile=True)
        self._train = tf.function(lambda iterator, stop: self._on_replicas(train_step, next(iterator), stop))
        self._test = tf.function(lambda iterator: self._on_replicas(test_step, next(iterator), tf.constant(0.0))[0])

    def _on_replicas(self, step, batch, stop):
        def replica_fn(batch, stop):
            logs = step(batch)
            context = tf.distribute.get_replica_context()
            if context.num_replicas_in_sync > 1:
                # One collective: every replica's logs and stop signal, then their mean and maximum.
                names = sorted(logs)
                mine = tf.stack([tf.cast(logs[n], tf.float32) for n in names] + [stop])[None]
                every = context.all_gather(mine, axis=0)
                logs = dict(zip(names, tf.unstack(tf.reduce_mean(every[:, :-1], axis=0), num=len(names))))
                stop = tf.reduce_max(every[:, -1])
            return logs, stop

        results = self.strategy.run(replica_fn, args=(batch, stop))
        return tf.nest.map_structure(lambda value: self.strategy.experimental_local_results(value)[0], results)

    def distribute(self, make_dataset: Callable[[], tf.data.Dataset]):
        return distribute_batches(self.strategy, make_dataset, self.agent.config.batch_size)

    def train_step(self, iterator, stop_signal: int = 0) -> tuple[dict, int]:
        """(logs, the largest stop signal number any worker passed, 0 for none) of one update."""
        logs, stop = self._train(iterator, tf.constant(float(stop_signal)))
        return logs, int(stop.numpy())

    def validate(self, dataset, batches: int) -> dict:
        """The losses of `batches` validation batches (from the start of `dataset`), averaged."""
        self.agent.reset_metrics()
        iterator = iter(dataset)
        logs = {}
        for _ in range(batches):
            logs = self._test(iterator)
        return {name: float(value) for name, value in logs.items()}


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in the one process that writes the run directory (every process but non-chief workers)."""
    return bool(strategy.extended.should_checkpoint)


def run_training(
    config,
    data_dir,
    workdir,
    strategy_name: str = "default",
    export: bool = True,
    show_progress: bool = True,
    validation_batches: int = 10,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a SORL agent on the prepared TFRecords in `data_dir`; returns a summary
    dict (workdir, step, checkpoint, and export when exported; chief: whether this process wrote them).

    `config` is a pipeline.config.RunConfig (validated when built). Raises TrainingError on a run
    that cannot go on (a resume with other agent or data settings, checkpoints none of which
    restores, a non-finite loss) and TrainingInterrupted after SIGINT/SIGTERM.
    """
    schedule = config.schedule
    workdir = Path(workdir)
    strategy = make_strategy(strategy_name)
    chief = is_chief(strategy)
    if not chief:
        log = _quiet  # the chief says it once
    meta = reader.load_metadata(str(data_dir))
    obs_dim, action_dim = int(meta["obs_dim"]), int(meta["action_dim"])
    replicas = strategy.num_replicas_in_sync
    if config.agent.batch_size % replicas:
        raise TrainingError(f"batch_size={config.agent.batch_size} does not split over the {replicas} replicas of "
                            f"--strategy={strategy_name}: pass a --batch_size that is a multiple of {replicas}.")

    dataset = run_config.dataset_record(meta)  # action bounds, observation statistics, reference returns

    with strategy.scope():
        agent = run_config.make_agent(config.agent, obs_dim, action_dim, dataset, f"{Path(data_dir) / 'metadata.json'}")
        agent.compile(jit_compile=schedule.jit_compile)
    resuming = _restore_or_start(agent, config, workdir, data_dir, strategy_name, obs_dim, action_dim, log, chief,
                                 dataset)
    driver = TrainingDriver(agent, strategy)
    start_step = _agreed_step(strategy, agent)
    # Non-chief workers join every save (the strategy requires it) into a folder deleted at the end.
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="sorl-worker-checkpoints-"))
    try:
        try:
            summary = _train_and_export(config, data_dir, workdir, strategy_name, export, show_progress,
                                        validation_batches, log, agent, driver, chief, resuming, start_step, scratch,
                                        dataset)
        except (TrainingInterrupted, TrainingError):  # a stop every worker takes after the same step
            _end_together(strategy, strategy_name)
            raise
        except PEER_LOST as error:
            if strategy_name != "multi_worker":
                raise
            # A worker died (killed, lost machine): the collectives of the others fail after a heartbeat timeout.
            raise TrainingError(
                f"{workdir}: a worker of the cluster stopped or cannot be reached ({checkpoints._why(error)}); "
                f"stop every worker and start the same command on all of them again: they resume from the last "
                f"checkpoint in {workdir / checkpoints.CHECKPOINT_DIR}.") from None
        _end_together(strategy, strategy_name)
        return summary
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_and_export(config, data_dir, workdir, strategy_name, export, show_progress, validation_batches, log,
                      agent, driver, chief, resuming, start_step, scratch, dataset) -> dict:
    schedule = config.schedule
    multi_worker = strategy_name == "multi_worker"
    # The run's clock is the agent's count of updates (one per gradient step), saved with the
    # agent; the checkpoint's own `step` mirrors it for readers that load no optimizer.
    manager = checkpoints.make_checkpoint_manager(agent, str(workdir if chief else scratch),
                                                  tf.Variable(0, dtype=tf.int64, trainable=False))
    if chief:
        for csv_path in (workdir / "metrics.csv", workdir / "eval.csv"):
            dropped = run_logs.drop_rows_after(csv_path, start_step)
            if dropped:  # logged after the restored checkpoint by a run that was killed: logged again below
                log(f"Dropped {dropped} rows after step {start_step} from {csv_path}.")
        writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        run_logs.mark_start(writer, start_step)
        if not resuming:
            run_logs.write_hparams(writer, config, trial_id=workdir.name)
    else:
        writer = tf.summary.create_noop_writer()

    state = callbacks.TrainingState(start_step)
    progress = callbacks.ProgressReporter(state, schedule.gradient_steps, show_bar=show_progress and chief,
                                          quiet=not chief)
    eval_log = run_logs.EvalLog(workdir)
    evaluation = None
    # In the environment, on the chief alone: it issues no collective.
    if schedule.eval_episodes > 0 and chief and callbacks.can_evaluate(config.data, log):
        evaluation = callbacks.PeriodicEvaluation(
            state, agent, config.data, episodes=schedule.eval_episodes, seed=config.agent.seed + EVAL_SEED_OFFSET,
            every=schedule.eval_every, eval_log=eval_log, writer=writer, say=progress.say, dataset=dataset,
        )
    hooks = [
        state,
        callbacks.NonFiniteGuard(state, manager),
        *([callbacks.MetricsLogger(state, writer, workdir / "metrics.csv")] if chief else []),
        progress,
        callbacks.PeriodicCheckpoint(state, manager, every=schedule.checkpoint_every),
        *([evaluation] if evaluation is not None else []),
    ]

    def request_stop(signal_number: int) -> None:
        state.request_stop(signal_number)
        progress.say(interrupts.stopping_message(signal_number, state.step + 1))

    # Several workers stop together: a worker's signal travels with its next step (TrainingDriver).
    signals = interrupts.PendingSignal() if multi_worker else None
    if start_step < schedule.gradient_steps:
        wall = time.perf_counter()
        try:
            with interrupts.StopOnSignals(signals.record if signals else request_stop):
                _train(driver, config, data_dir, hooks, state, validation_batches, signals, request_stop)
        finally:
            progress.close()
            writer.flush()
        wall = time.perf_counter() - wall
        if state.failure:
            raise TrainingError(f"{workdir}: training stopped: {state.failure}")
        step = _agent_step(agent)
        if manager.latest_checkpoint is None or step != _checkpoint_step(manager):
            callbacks.save_checkpoint(manager, step)
        log(f"Trained {step - start_step} steps in {wall:.1f} s ({(step - start_step) / max(wall, 1e-9):.2f} steps/s).")
        if state.stop_signal is not None:
            raise TrainingInterrupted(state.stop_signal, step, _run_checkpoint(workdir, step))
    else:
        log(f"{workdir} already holds {start_step} >= {schedule.gradient_steps} steps; nothing to train.")

    step = _agent_step(agent)
    summary = {"workdir": str(workdir), "step": step, "checkpoint": _run_checkpoint(workdir, step), "chief": chief}
    if chief:
        if evaluation is not None and not any(int(r["step"]) == schedule.gradient_steps for r in eval_log.rows()):
            evaluation.evaluate(step)
        if export:
            from serving.export import export_saved_model

            summary["export"] = export_saved_model(agent, str(workdir / "export"))
            log(f"Exported SavedModel to {summary['export']}.")
    return summary


def _quiet(line: str) -> None:
    """A non-chief worker's log: nothing (the chief says the same)."""


def _train(driver: TrainingDriver, config, data_dir, hooks, state: callbacks.TrainingState, validation_batches: int,
           signals: Optional[interrupts.PendingSignal], request_stop: Callable[[int], None]) -> None:
    """Gradient steps from the current one to schedule.gradient_steps, in the windows of log_windows,
    calling `hooks` as Keras' fit calls its callbacks (set_params, on_train_begin, on_train_batch_end
    after each step, on_epoch_end after each window with its metrics and val_ metrics, on_train_end).

    Each call of log_windows' list reshuffles the data with a seed from its first step: the data
    order is not checkpointed, the model state is. `signals` (several workers): the stop requests
    this worker received, agreed with the others at every step.
    """
    agent = driver.agent
    validation = driver.distribute(lambda: validation_dataset(data_dir, config))
    for hook in hooks:
        hook.set_model(agent)
    for first_step, window_steps, windows in log_windows(state.step, config.schedule.gradient_steps,
                                                         config.schedule.log_every):
        if state.stopping:
            break
        seed = config.agent.seed + first_step
        batches = iter(driver.distribute(lambda: reader.make_dataset(
            str(data_dir), split="train", task=config.data.reward_key, batch_size=config.agent.batch_size, seed=seed)))
        agent.stop_training = False
        for hook in hooks:
            hook.set_params({"epochs": windows, "steps": window_steps, "verbose": 0})
            hook.on_train_begin()
        for window in range(windows):
            agent.reset_metrics()
            logs = {}
            for batch in range(window_steps):
                logs, agreed = driver.train_step(batches, signals.signal if signals else 0)
                if agreed and state.stop_signal is None:
                    request_stop(agreed)
                for hook in hooks:
                    hook.on_train_batch_end(batch, logs)
                if agent.stop_training:
                    break
            window_logs = {name: float(value) for name, value in logs.items()}
            if validation_batches > 0:
                window_logs.update({f"val_{name}": value
                                    for name, value in driver.validate(validation, validation_batches).items()})
            for hook in hooks:
                hook.on_epoch_end(window, window_logs)
            if agent.stop_training:
                break
        for hook in hooks:
            hook.on_train_end()


def _gather(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` of every replica (a collective: every worker must call it at the same point)."""
    mine = tf.constant([value], tf.int64)

    @tf.function
    def gather():
        every = strategy.run(lambda: tf.distribute.get_replica_context().all_gather(mine, axis=0))
        return strategy.experimental_local_results(every)[0]

    return [int(v) for v in gather().numpy()]


def _end_together(strategy: tf.distribute.Strategy, strategy_name: str) -> None:
    """Several workers wait for each other (the chief's evaluation and export) and end together: a
    worker that leaves first looks like a crash to the cluster's coordination service."""
    if strategy_name == "multi_worker":
        _gather(strategy, 0)


def _agreed_step(strategy: tf.distribute.Strategy, agent: SORLAgent) -> int:
    """The restored step, checked to be the same on every worker (they restore from one shared run
    directory); TrainingError when not, which names what to fix."""
    step = _agent_step(agent)
    if strategy.num_replicas_in_sync > 1:
        steps = sorted(set(_gather(strategy, step)))
        if len(steps) > 1:
            raise TrainingError(
                f"the workers restored different steps ({', '.join(map(str, steps))}; this one {step}): every worker "
                "must see the same run directory at the same path (a shared file system) to resume together.")
    return step


def _restore_or_start(agent, config, workdir: Path, data_dir, strategy_name, obs_dim, action_dim, log,
                      chief: bool = True, dataset=None) -> bool:
    """Restores the newest checkpoint that restores into `agent`, or starts a new run directory
    (writing its config.json); True when resuming an existing run. TrainingError when the run
    directory holds checkpoints without a config.json, or a config.json whose checkpoints all fail.
    A non-chief worker (chief=False) only reads: it restores what the chief restores and writes nothing.
    """
    config_path = workdir / checkpoints.CONFIG_FILE
    checkpoint_dir = workdir / checkpoints.CHECKPOINT_DIR
    found = checkpoints.checkpoint_files(checkpoint_dir)
    if not config_path.exists():
        if found:
            raise TrainingError(
                f"{checkpoint_dir} holds checkpoints ({', '.join(f'ckpt-{s}' for s in found)}) but {config_path} "
                "is missing: restore it to resume, or pass a new --workdir."
            )
        if not chief:
            return False
        workdir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(workdir, log)
        run_config.save_run_config(workdir, config, obs_dim, action_dim, data_dir=str(data_dir),
                                   strategy=strategy_name, dataset=dataset)
        log(f"Training {config.data.label} for {config.schedule.gradient_steps} steps; run directory {workdir}.")
        return False
    try:
        run_config.check_resumable(workdir, config, dataset)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if chief:
        _remove_leftovers(workdir, log)
    if not found:
        # Killed before its first checkpoint: nothing was lost but those steps; config.json stays.
        if chief:
            checkpoint_dir.joinpath(checkpoints.INDEX_FILE).unlink(missing_ok=True)  # it lists nothing there
        log(f"{workdir} has a config.json but no checkpoint yet: training from step 0.")
        return True
    try:
        restored = checkpoints.restore_newest(tf.train.Checkpoint(agent=agent), checkpoint_dir, say=log)
    except checkpoints.CheckpointError as error:
        raise TrainingError(f"{error} {config_path} is kept; delete the run directory to start over, "
                            "or pass a new --workdir.") from None
    if not chief:
        return True
    if restored.skipped:
        aside = checkpoints.set_aside(checkpoint_dir, [step for step, _ in restored.skipped])
        log(f"Moved the checkpoints that do not restore to {aside}.")
    checkpoints.rewrite_index(checkpoint_dir)  # also rebuilds a lost or corrupt index from the files
    log(f"Resuming {workdir} from {restored.path} (step {_agent_step(agent)}).")
    return True


def _remove_leftovers(workdir: Path, log) -> None:
    """Deletes the partial files of saves and writes that a kill cut short, and says which."""
    removed = checkpoints.remove_unfinished_saves(workdir / checkpoints.CHECKPOINT_DIR)
    for path in files.leftover_temporaries(workdir):
        path.unlink()
        removed.append(path)
    if removed:
        log(f"Removed what an interrupted save left behind: {', '.join(str(p) for p in removed)}.")


def _agent_step(agent) -> int:
    return int(agent.training_steps.numpy())


def _checkpoint_step(manager: tf.train.CheckpointManager) -> int:
    return int(manager.latest_checkpoint.rsplit("-", 1)[-1])


def _run_checkpoint(workdir: Path, step: int) -> str:
    """The chief's checkpoint of `step` in the run directory (what every worker reports)."""
    return str(workdir / checkpoints.CHECKPOINT_DIR / f"ckpt-{step}")
