"""The SORL training loop: build the agent under a strategy, restore or start, fit, checkpoint, export.

`pipeline/train.py` parses flags, prepares the data (pipeline/datasets.py) and calls `run_training`;
tests call it too. The loop is `agent.fit` whose "epochs" are log windows: they end at every multiple
of `schedule.log_every` and at `gradient_steps` (the last window may be shorter), so the agent's own
XLA-compiled `train_step` runs untouched. Metrics and validation are logged at window ends;
checkpoints and evaluations happen at the exact multiples of their own periods (pipeline/callbacks.py),
so no period has to divide another. SIGINT or SIGTERM stops the run after the step in flight with a
checkpoint of that step (pipeline/interrupts.py); the rerun resumes there.

A rerun over an existing run directory (its config.json) resumes from the newest checkpoint that
restores, skipping (and moving to checkpoints/damaged/) newer ones that do not; it refuses to start
when none restores, and never rewrites config.json. It deletes what a killed save left behind and
the metrics.csv / eval.csv rows after the restored step, so every step is logged once.
A resumed run marks its restart in TensorBoard (run_logs.mark_start), which then drops the points
logged after the restored step by the killed run, so those steps are shown once there too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import tensorflow as tf

from data import files, reader
from models import checkpoints
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


def log_windows(start: int, total: int, log_every: int) -> list[tuple[int, int, int]]:
    """The fit calls from gradient step `start` to `total`: (first step, steps per epoch, epochs).

    Epochs end at every multiple of log_every and at total: a resume off the log grid (after a
    stop) first runs one short epoch back onto it, and a total off the grid ends with a short one.
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
    """The validation split as fit evaluates it at every log boundary, with tf.data's autotuning off.

    Keras rebuilds its validation iterator at each evaluation, and with autotuning on, dropping the
    old one waits for the autotune thread (BENCHMARKS.md); a few in-memory batches need no tuning.
    """
    dataset = reader.make_dataset(str(data_dir), split="val", task=config.data.reward_key,
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

    `config` is a pipeline.config.RunConfig (validated when built). Raises TrainingError on a run
    that cannot go on (a resume with other agent or data settings, checkpoints none of which
    restores, a non-finite loss) and TrainingInterrupted after SIGINT/SIGTERM.
    """
    schedule = config.schedule
    workdir = Path(workdir)
    meta = reader.load_metadata(str(data_dir))
    obs_dim, action_dim = int(meta["obs_dim"]), int(meta["action_dim"])
    dataset = run_config.dataset_record(meta)  # action bounds, observation statistics, reference returns

    with make_strategy(strategy_name).scope():
        agent = run_config.make_agent(config.agent, obs_dim, action_dim, dataset, f"{Path(data_dir) / 'metadata.json'}")
        agent.compile(jit_compile=schedule.jit_compile)
    resuming = _restore_or_start(agent, config, workdir, data_dir, strategy_name, obs_dim, action_dim, log, dataset)
    # The run's clock is the agent's count of updates (one per gradient step), saved with the
    # agent; the checkpoint's own `step` mirrors it for readers that load no optimizer.
    manager = checkpoints.make_checkpoint_manager(agent, str(workdir), tf.Variable(0, dtype=tf.int64, trainable=False))
    start_step = _agent_step(agent)
    for csv_path in (workdir / "metrics.csv", workdir / "eval.csv"):
        dropped = run_logs.drop_rows_after(csv_path, start_step)
        if dropped:  # logged after the restored checkpoint by a run that was killed: logged again below
            log(f"Dropped {dropped} rows after step {start_step} from {csv_path}.")
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    run_logs.mark_start(writer, start_step)
    if not resuming:
        run_logs.write_hparams(writer, config, trial_id=workdir.name)

    state = callbacks.TrainingState(start_step)
    progress = callbacks.ProgressReporter(state, schedule.gradient_steps, show_bar=show_progress)
    eval_log = run_logs.EvalLog(workdir)
    evaluation = None
    if schedule.eval_episodes > 0 and callbacks.can_evaluate(config.data, log):
        evaluation = callbacks.PeriodicEvaluation(
            state, agent, config.data, episodes=schedule.eval_episodes, seed=config.agent.seed + EVAL_SEED_OFFSET,
            every=schedule.eval_every, eval_log=eval_log, writer=writer, say=progress.say, dataset=dataset,
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


def _restore_or_start(agent, config, workdir: Path, data_dir, strategy_name, obs_dim, action_dim, log,
                      dataset=None) -> bool:
    """Restores the newest checkpoint that restores into `agent`, or starts a new run directory
    (writing its config.json); True when resuming an existing run. TrainingError when the run
    directory holds checkpoints without a config.json, or a config.json whose checkpoints all fail.
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
        workdir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(workdir, log)
        run_config.save_run_config(workdir, config, obs_dim, action_dim, data_dir=str(data_dir),
                                   strategy=strategy_name, dataset=dataset)
        log(f"Training {config.data.label} for {config.schedule.gradient_steps} steps; run directory {workdir}.")
        return False
    try:
        run_config.check_resumable(workdir, config)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    _remove_leftovers(workdir, log)
    if not found:
        # Killed before its first checkpoint: nothing was lost but those steps; config.json stays.
        checkpoint_dir.joinpath(checkpoints.INDEX_FILE).unlink(missing_ok=True)  # it lists nothing there
        log(f"{workdir} has a config.json but no checkpoint yet: training from step 0.")
        return True
    try:
        restored = checkpoints.restore_newest(tf.train.Checkpoint(agent=agent), checkpoint_dir, say=log)
    except checkpoints.CheckpointError as error:
        raise TrainingError(f"{error} {config_path} is kept; delete the run directory to start over, "
                            "or pass a new --workdir.") from None
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


def _fit(agent, config, data_dir, fit_callbacks, state: callbacks.TrainingState, validation_batches: int) -> None:
    """agent.fit from the current step to schedule.gradient_steps in the epochs of log_windows.

    Each fit call reshuffles the data with a seed from its first step: the data order is not
    checkpointed, the model state is.
    """
    val_ds = validation_dataset(data_dir, config)
    for first_step, epoch_steps, epochs in log_windows(state.step, config.schedule.gradient_steps,
                                                       config.schedule.log_every):
        if state.stopping:
            break
        train_ds = reader.make_dataset(str(data_dir), split="train", task=config.data.reward_key,
                                       batch_size=config.agent.batch_size, seed=config.agent.seed + first_step)
        agent.fit(
            train_ds,
            epochs=epochs,
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
