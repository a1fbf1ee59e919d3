"""The SORL training loop: build the agent under a strategy, restore or start, fit, checkpoint, export.

`pipeline/train.py` parses flags, prepares the data (pipeline/datasets.py) and calls `run_training`;
tests call it too. The loop is `agent.fit` whose "epochs" are `schedule.log_every` gradient steps,
so the agent's own XLA-compiled `train_step` runs untouched and everything periodic (logging,
validation, checkpoints, evaluation: pipeline/callbacks.py) happens at epoch ends, at exact
multiples of the step counts. SIGINT or SIGTERM stops the run after the step in flight with a
checkpoint of that step (pipeline/interrupts.py); the rerun resumes there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import tensorflow as tf

from data import reader
from models import checkpoints
from models.sorl import SORLAgent
from pipeline import callbacks, interrupts, run_logs
from pipeline import config as run_config
from pipeline.interrupts import TrainingInterrupted

EVAL_SEED_OFFSET = 1_000_000  # evaluation seed = agent seed + this: the same episodes at every evaluation


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says why and what to do."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs, or CPUs if configured), or `tpu`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise TrainingError(f"--strategy={name!r} is not one of: default, mirrored, tpu")


def check_schedule(schedule) -> None:
    """Every periodic action must land on a log boundary, since the loop only stops there."""
    if schedule.gradient_steps <= 0:
        raise TrainingError(f"gradient_steps={schedule.gradient_steps}: the number of gradient steps must be positive")
    for field in ("eval_every", "checkpoint_every", "gradient_steps"):
        value = getattr(schedule, field)
        if value > 0 and value % schedule.log_every:
            raise TrainingError(
                f"{field}={value} is not a multiple of log_every={schedule.log_every}; pass --set log_every=N "
                "with N dividing gradient_steps (--steps), eval_every and checkpoint_every"
            )


def validation_dataset(data_dir, config) -> tf.data.Dataset:
    """The validation split as fit evaluates it at every log boundary, with tf.data's autotuning off.

    Keras rebuilds its validation iterator at each evaluation, and with autotuning on, dropping the
    old one waits for the autotune thread (BENCHMARKS.md); a few in-memory batches need no tuning.
    """
    dataset = reader.make_dataset(str(data_dir), split="val", task=config.data.task,
                                  batch_size=config.agent.batch_size, seed=config.agent.seed)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


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
    dict (workdir, step, checkpoint, and export when exported).

    `config` is a pipeline.config.RunConfig. Raises TrainingError on a bad run (a schedule off the
    log grid, a resume with other agent or data settings, a non-finite loss) and TrainingInterrupted
    after SIGINT/SIGTERM.
    """
    schedule = config.schedule
    check_schedule(schedule)
    workdir = Path(workdir)
    meta = reader.load_metadata(str(data_dir))
    obs_dim, action_dim = int(meta["obs_dim"]), int(meta["action_dim"])

    with make_strategy(strategy_name).scope():
        agent = SORLAgent(config.agent, obs_dim, action_dim)
        agent.compile(jit_compile=schedule.jit_compile)
    # The run's clock is the agent's count of updates (one per gradient step), saved with the
    # agent; the checkpoint's own `step` mirrors it for readers that load no optimizer.
    manager = checkpoints.make_checkpoint_manager(agent, str(workdir), tf.Variable(0, dtype=tf.int64, trainable=False))

    resuming = workdir.joinpath("config.json").exists() and manager.latest_checkpoint is not None
    if resuming:
        try:
            run_config.check_resumable(workdir, config)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"Resuming {workdir} from {manager.latest_checkpoint} (step {_agent_step(agent)}).")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        run_config.save_run_config(workdir, config, obs_dim, action_dim, data_dir=str(data_dir),
                                   strategy=strategy_name)
        log(f"Training {config.data.env} task {config.data.task} for {schedule.gradient_steps} steps; "
            f"run directory {workdir}.")
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    if not resuming:
        run_logs.write_hparams(writer, config, trial_id=workdir.name)
    start_step = _agent_step(agent)

    state = callbacks.TrainingState(start_step)
    progress = callbacks.ProgressReporter(state, schedule.gradient_steps, show_bar=show_progress)
    eval_log = run_logs.EvalLog(workdir)
    evaluation = None
    if schedule.eval_episodes > 0:
        evaluation = callbacks.PeriodicEvaluation(
            state, agent, config.data, episodes=schedule.eval_episodes, seed=config.agent.seed + EVAL_SEED_OFFSET,
            every=schedule.eval_every, eval_log=eval_log, writer=writer, say=progress.say,
        )
    fit_callbacks = [
        state,
        callbacks.NonFiniteGuard(state, manager),
        callbacks.MetricsLogger(state, writer, workdir / "metrics.csv"),
        progress,
        callbacks.PeriodicCheckpoint(state, manager, every=schedule.checkpoint_every),
        *([evaluation] if evaluation is not None else []),
    ]

    def request_stop(signal_number: int) -> None:
        state.request_stop(signal_number)
        progress.say(interrupts.stopping_message(signal_number, state.step + 1))

    if start_step < schedule.gradient_steps:
        wall = time.perf_counter()
        try:
            with interrupts.StopOnSignals(request_stop):
                _fit(agent, config, data_dir, fit_callbacks, state, validation_batches)
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
            raise TrainingInterrupted(state.stop_signal, step, manager.latest_checkpoint)
    else:
        log(f"{workdir} already holds {start_step} >= {schedule.gradient_steps} steps; nothing to train.")

    if evaluation is not None and not any(int(r["step"]) == schedule.gradient_steps for r in eval_log.rows()):
        evaluation.evaluate(_agent_step(agent))
    summary = {"workdir": str(workdir), "step": _agent_step(agent), "checkpoint": manager.latest_checkpoint}
    if export:
        from serving.export import export_saved_model

        summary["export"] = export_saved_model(agent, str(workdir / "export"))
        log(f"Exported SavedModel to {summary['export']}.")
    return summary


def _fit(agent, config, data_dir, fit_callbacks, state: callbacks.TrainingState, validation_batches: int) -> None:
    """agent.fit from the current step to schedule.gradient_steps in "epochs" of log_every steps.

    A run interrupted between log boundaries resumes with one short epoch back onto them. Each fit
    call reshuffles the data with a seed from its first step: the data order is not checkpointed,
    the model state is.
    """
    window, total = config.schedule.log_every, config.schedule.gradient_steps
    val_ds = validation_dataset(data_dir, config)
    while state.step < total and not state.stopping:
        step = state.step
        epoch_steps = window - step % window  # == window except right after an off-grid resume
        train_ds = reader.make_dataset(str(data_dir), split="train", task=config.data.task,
                                       batch_size=config.agent.batch_size, seed=config.agent.seed + step)
        agent.fit(
            train_ds,
            initial_epoch=step // window,
            epochs=step // window + 1 if epoch_steps != window else total // window,
            steps_per_epoch=epoch_steps,
            validation_data=val_ds,
            validation_steps=validation_batches,
            callbacks=fit_callbacks,
            shuffle=False,  # the reader shuffles (seeded); Keras would only warn that it cannot
            verbose=0,
        )


def _agent_step(agent) -> int:
    return int(agent.training_steps.numpy())


def _checkpoint_step(manager: tf.train.CheckpointManager) -> int:
    return int(manager.latest_checkpoint.rsplit("-", 1)[-1])
