"""The SORL training job: data, agent, Keras `fit` loop, checkpoints, TensorBoard, evaluation, export.

`pipeline/train.py` parses flags and calls `run_training`; tests call it too. The loop is
`agent.fit` whose "epochs" are `config.log_every` gradient steps, so the agent's own XLA-compiled
`train_step` runs untouched and everything periodic (logging, validation, checkpoints, evaluation)
happens at epoch ends, at exact multiples of the step counts. SIGINT or SIGTERM stops the run after
the step in flight with a checkpoint of that step (TrainingInterrupted); the rerun resumes there.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import tensorflow as tf
import keras

from data import envs, reader, schema
from models import checkpoints
from models.config import SORLConfig, config_to_dict
from models.sorl import SORLAgent

EVAL_BUDGETS = (1, 2, 4, 8)  # SPEC 5: the evaluation reports every k in {1, 2, 4, 8}
DEFAULT_ARTIFACTS = Path("artifacts")  # relative to the working directory: data, runs, exports
# Fields that may differ between a run and its resumption: they change how long or how often, not what.
RESUMABLE_FIELDS = {
    "steps", "log_every", "eval_every", "eval_episodes", "checkpoint_every", "jit_compile", "cap_step_level",
}


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint of its last finished step."""

    def __init__(self, signal_number: int, step: int, checkpoint: str):
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signal_number).name} at step {step}; saved {checkpoint}. "
            "Rerun the same command to resume from there."
        )


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


def check_schedule(config: SORLConfig) -> None:
    """Every periodic action must land on a log boundary, since the loop only stops there."""
    if config.steps <= 0:
        raise TrainingError(f"steps={config.steps}: the number of gradient steps must be positive")
    for field in ("eval_every", "checkpoint_every", "steps"):
        value = getattr(config, field)
        if value > 0 and value % config.log_every:
            raise TrainingError(
                f"{field}={value} is not a multiple of log_every={config.log_every}; "
                f"pass --set log_every=N with N dividing {field} (and steps, eval_every, checkpoint_every)"
            )


def check_resumable(workdir: Path, config: SORLConfig) -> None:
    """Refuse to resume a run whose agent settings differ from the ones asked for now."""
    saved = checkpoints.read_run_config(workdir)["config"]
    asked = config_to_dict(config)
    changed = {k: (saved.get(k), v) for k, v in asked.items() if k not in RESUMABLE_FIELDS and saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(changed.items()))
        raise TrainingError(
            f"{workdir / 'config.json'} was written by a run with other settings ({detail}); "
            "resume with the same settings, or pass a new --workdir"
        )


def append_csv_rows(path: Path, fieldnames: Sequence[str], rows: Sequence[dict]) -> None:
    """Appends rows to a CSV, writing the header when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        if new:
            writer.writeheader()
        writer.writerows(rows)


class EvalLog:
    """Evaluation results as a CSV (one row per step and budget) and a learning-curve PNG."""

    FIELDS = ("step", "task", "steps_k", "num_samples", "success_rate", "mean_return", "episodes", "seconds")

    def __init__(self, workdir: Path):
        self.csv_path = workdir / "eval.csv"
        self.png_path = workdir / "learning_curve.png"

    def append(self, rows: Sequence[dict]) -> None:
        append_csv_rows(self.csv_path, self.FIELDS, rows)

    def rows(self) -> list[dict]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def plot(self, title: str) -> None:
        rows = self.rows()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for k in sorted({int(r["steps_k"]) for r in rows}):
            pts = sorted((int(r["step"]), 100 * float(r["success_rate"])) for r in rows if int(r["steps_k"]) == k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"k={k} Euler steps")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("success rate (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.png_path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, self.png_path)


class TrainingMonitor(keras.callbacks.Callback):
    """Progress bar, NaN guard, TensorBoard scalars, checkpoints and periodic evaluation.

    One callback so their order within a boundary is fixed: check finiteness, then log, then
    checkpoint (only finite weights are ever saved), then evaluate.
    """

    def __init__(
        self,
        config: SORLConfig,
        workdir: Path,
        manager: tf.train.CheckpointManager,
        start_step: int,
        evaluate: Optional[Callable[[int], list[dict]]],
        show_progress: bool = True,
    ):
        super().__init__()
        self.config = config
        self.manager = manager
        self.step = start_step
        self.evaluate = evaluate
        self.writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        self.metrics_csv = workdir / "metrics.csv"
        self.show_progress = show_progress
        self.failure: Optional[str] = None
        self.interrupted: Optional[int] = None  # the signal number once SIGINT/SIGTERM asked to stop
        self._bar = None
        self._window_start = (time.perf_counter(), start_step)

    def on_train_begin(self, logs=None):
        if self.show_progress and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.config.steps, initial=self.step, unit="step", dynamic_ncols=True, desc="train", smoothing=0.05
            )

    def request_stop(self, signal_number: int) -> None:
        """Called from a signal handler: stop after the step in flight (train_step is not interrupted)."""
        self.interrupted = signal_number
        self.say(f"{signal.Signals(signal_number).name}: stopping after step {self.step + 1} and saving a "
                 "checkpoint (send it again to stop at once, losing the steps since the last checkpoint)")

    def say(self, line: str) -> None:
        """A log line that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        logs = logs or {}
        bad = {k: v for k, v in logs.items() if k.endswith("loss") and not math.isfinite(float(v))}
        if bad:
            self.failure = (
                f"non-finite loss at step {self.step}: "
                + ", ".join(f"{k}={float(v)}" for k, v in sorted(bad.items()))
                + f"; the last good checkpoint is {self.manager.latest_checkpoint}"
            )
            self.model.stop_training = True
        if self.interrupted is not None:
            self.model.stop_training = True
        if self._bar is not None:
            self._bar.update(1)
            if self.step % 10 == 0 or bad:
                self._bar.set_postfix_str(
                    " ".join(f"{k.split('/')[0][0]}/{k.split('/')[1]}={float(v):.3g}" for k, v in logs.items()
                             if k in ("critic/loss", "actor/fm_loss", "actor/sc_loss", "actor/q_loss", "critic/q_mean"))
                )

    def on_epoch_end(self, epoch, logs=None):
        if self.failure:
            return
        logs = dict(logs or {})
        now = time.perf_counter()
        t0, s0 = self._window_start
        steps_per_s = (self.step - s0) / max(now - t0, 1e-9)
        self._window_start = (now, self.step)
        logs["perf/steps_per_second"] = steps_per_s
        with self.writer.as_default(step=self.step):
            for name, value in logs.items():
                tf.summary.scalar(name if not name.startswith("val_") else "val/" + name[4:], float(value))
        self._append_metrics(logs)
        if self._bar is None:
            self.say(self.progress_line(steps_per_s, logs))
        if self.config.checkpoint_every > 0 and self.step % self.config.checkpoint_every == 0:
            save_checkpoint(self.manager, self.step)
        if self.evaluate is not None and self.config.eval_every > 0 and self.step % self.config.eval_every == 0:
            self.run_evaluation()
        self.writer.flush()

    def progress_line(self, steps_per_s: float, logs: dict) -> str:
        """'step 1000/80000 (1.2%) 8.1 steps/s ETA 2:42:33 c/loss=... a/fm_loss=...' (logs without a bar)."""
        from tqdm import tqdm

        remaining = max(self.config.steps - self.step, 0)
        # tqdm's own formatter (the bar's): hours past 24 stay hours, where strftime would wrap.
        eta = tqdm.format_interval(remaining / steps_per_s) if steps_per_s > 0 else "?"
        losses = " ".join(
            f"{k}={float(logs[k]):.4g}"
            for k in ("critic/loss", "actor/fm_loss", "actor/sc_loss", "actor/q_loss", "critic/q_mean")
            if k in logs
        )
        return (f"step {self.step}/{self.config.steps} ({100 * self.step / self.config.steps:.1f}%) "
                f"{steps_per_s:.2f} steps/s ETA {eta} {losses}")

    def run_evaluation(self):
        rows = self.evaluate(self.step)
        with self.writer.as_default(step=self.step):
            for r in rows:
                tf.summary.scalar(f"eval/success_k{r['steps_k']}", r["success_rate"])
                tf.summary.scalar(f"eval/return_k{r['steps_k']}", r["mean_return"])
        self.say(f"step {self.step}: success " + " ".join(f"k={r['steps_k']}:{100 * r['success_rate']:.0f}%" for r in rows))

    def _append_metrics(self, logs: dict) -> None:
        row = {"step": self.step, **{k: float(v) for k, v in logs.items()}}
        append_csv_rows(self.metrics_csv, list(row), [row])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.writer.flush()


def write_hparams(workdir: Path, config: SORLConfig) -> None:
    """The run's hyper-parameters for TensorBoard's HParams dashboard."""
    from tensorboard.plugins.hparams import api as hp

    values = {}
    for k, v in config_to_dict(config).items():
        values[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    with tf.summary.create_file_writer(str(workdir / "tensorboard")).as_default():
        hp.hparams(values, trial_id=workdir.name)


def make_environment_evaluator(agent: SORLAgent, config: SORLConfig, eval_log: EvalLog) -> Callable[[int], list[dict]]:
    """Evaluate every budget k in EVAL_BUDGETS with `config.eval_episodes` real-environment episodes."""
    from pipeline import evaluation

    policies = {k: evaluation.make_agent_policy(agent, steps=k, num_samples=1) for k in EVAL_BUDGETS}

    def evaluate(step: int) -> list[dict]:
        rows = []
        for k, policy in policies.items():
            start = time.perf_counter()
            result = evaluation.evaluate_policy(
                policy,
                env=config.env,
                task=config.task,
                episodes=config.eval_episodes,
                seed=config.seed + 1_000_000,  # same evaluation episodes at every step: curves compare like with like
                episode_length=config.episode_length,
            )
            rows.append(
                dict(
                    step=step,
                    task=config.task,
                    steps_k=k,
                    num_samples=1,
                    success_rate=float(result["success_rate"]),
                    mean_return=float(result["mean_return"]),
                    episodes=int(result["episodes"]),
                    seconds=round(time.perf_counter() - start, 3),
                )
            )
        eval_log.append(rows)
        eval_log.plot(f"{config.env} task {config.task}")
        return rows

    return evaluate


def local_beam_args() -> list[str]:
    """Beam options for the local runner: one worker process per core."""
    return [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_processing"]


def check_dataset_matches(config: SORLConfig, data_dir, metadata: dict) -> None:
    """TrainingError unless the dataset has rewards for config.task and comes from config.env.

    Training reads the rewards of OGBench task `config.task` ('task{n}') and evaluates in the env
    family's OGBench environment, so a dataset of another family, or one that stores only its
    source's own rewards (a Minari dataset not recorded in an OGBench env), cannot train this run.
    """
    path = Path(data_dir) / "metadata.json"
    keys = list(metadata["reward_keys"])
    wanted = schema.reward_key(config.task)  # 'task{n}', the key the reader will look up
    if wanted not in keys:
        tasks = [key for key in keys if key.startswith("task")]
        hint = (f"pick --task from {[int(key[4:]) for key in tasks]}" if tasks else
                "this dataset stores only its source's own rewards; train.py trains OGBench task rewards "
                "(it evaluates in the OGBench env). Minari episodes recorded in an OGBench env (with "
                "infos['qpos']) get task rewards from preprocess.py --env=FAMILY")
        raise TrainingError(f"{path}: field 'reward_keys' is {keys}, with no '{wanted}' for --task={config.task}: "
                            f"{hint}.")
    data_env = metadata.get("env")
    if data_env is not None and envs.resolve_env(data_env).name != config.env:
        raise TrainingError(f"{path}: field 'env' is {data_env!r} but this run's env is {config.env!r}: the agent "
                            f"would be evaluated in another env than its data's. Pass --env={data_env} or "
                            "--data of that env.")


def ensure_dataset(config: SORLConfig, data_arg: Optional[str], generate_episodes: Optional[int] = None) -> Path:
    """The prepared TFRecord directory for the run, made on first use.

    Order: `--data` if given; else artifacts/data/DATASET if already prepared; else convert OGBench's
    own files if the user has them (~/.ogbench/data); else regenerate play data with the scripted
    oracles (cube-single, cube-double) and convert it with the Beam job.
    """
    if data_arg:
        # A clear error now beats one after the agent is built.
        check_dataset_matches(config, data_arg, reader.load_metadata(data_arg))
        return Path(data_arg)
    family = envs.resolve_env(config.env)
    dataset = family.dataset_name
    data_dir = DEFAULT_ARTIFACTS / "data" / dataset
    if (data_dir / "metadata.json").exists():
        return data_dir
    raw_dir = DEFAULT_ARTIFACTS / "raw"
    candidates = [Path("~/.ogbench/data").expanduser() / f"{dataset}.npz", raw_dir / f"{dataset}.npz"]
    npz = next((c for c in candidates if c.exists() and c.with_name(f"{dataset}-val.npz").exists()), None)
    beam_args = local_beam_args()
    if npz is None:
        if not family.can_generate:
            raise TrainingError(
                f"no prepared data for {family.name}: put OGBench's {dataset}.npz and {dataset}-val.npz in "
                "~/.ogbench/data, or pass --data=DIR (play data can be regenerated for cube-single and cube-double)"
            )
        from pipeline.generate import generate_play_data

        print(f"No data for {family.name}: regenerating play data with OGBench's scripted oracles into {raw_dir}.")
        kwargs = {} if generate_episodes is None else {"episodes": generate_episodes}
        npz = Path(generate_play_data(env=family.name, output_dir=str(raw_dir), seed=0, pipeline_args=beam_args,
                                      **kwargs)[0])
    from pipeline.preprocess import preprocess

    print(f"Converting {npz} to TFRecords in {data_dir} (Apache Beam, DirectRunner).")
    preprocess(f"ogbench:{npz}", str(data_dir), pipeline_args=beam_args)
    return data_dir


def run_training(
    config: SORLConfig,
    data_dir: Path,
    workdir: Path,
    strategy_name: str = "default",
    export: bool = True,
    show_progress: bool = True,
    validation_batches: int = 10,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a SORL agent; returns a summary dict. Raises TrainingError on a bad run."""
    check_schedule(config)
    workdir = Path(workdir)
    meta = reader.load_metadata(str(data_dir))
    obs_dim, action_dim = int(meta["obs_dim"]), int(meta["action_dim"])

    strategy = make_strategy(strategy_name)
    with strategy.scope():
        agent = SORLAgent(config, obs_dim, action_dim)
        agent.compile(jit_compile=config.jit_compile)
    # The run's clock is the agent's count of updates (one per gradient step), saved
    # with the agent; the checkpoint's own `step` mirrors it for readers that load no optimizer.
    step_variable = agent.training_steps
    manager = checkpoints.make_checkpoint_manager(agent, str(workdir), tf.Variable(0, dtype=tf.int64, trainable=False))

    resumed = workdir.joinpath("config.json").exists() and manager.latest_checkpoint is not None
    if resumed:
        check_resumable(workdir, config)
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"Resuming {workdir} from {manager.latest_checkpoint} (step {int(step_variable.numpy())}).")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoints.write_run_config(
            str(workdir), config, obs_dim, action_dim, extra={"data": str(data_dir), "strategy": strategy_name}
        )
        write_hparams(workdir, config)
        log(f"Training {config.env} task {config.task} for {config.steps} steps; run directory {workdir}.")
    start_step = int(step_variable.numpy())

    eval_log = EvalLog(workdir)
    evaluate = make_environment_evaluator(agent, config, eval_log) if config.eval_episodes > 0 else None
    monitor = TrainingMonitor(config, workdir, manager, start_step, evaluate, show_progress=show_progress)

    if start_step < config.steps:
        val_ds = validation_dataset(data_dir, config)
        wall = time.perf_counter()
        try:
            with _stop_on_signals(monitor):
                _fit(agent, config, data_dir, val_ds, monitor, start_step, validation_batches)
        finally:
            monitor.close()
        wall = time.perf_counter() - wall
        if monitor.failure:
            raise TrainingError(f"{workdir}: training stopped: {monitor.failure}")
        if manager.latest_checkpoint is None or int(step_variable.numpy()) != _checkpoint_step(manager):
            save_checkpoint(manager, int(step_variable.numpy()))
        steps_done = int(step_variable.numpy()) - start_step
        log(f"Trained {steps_done} steps in {wall:.1f} s ({steps_done / max(wall, 1e-9):.2f} steps/s).")
        if monitor.interrupted is not None:
            raise TrainingInterrupted(monitor.interrupted, int(step_variable.numpy()), manager.latest_checkpoint)
    else:
        log(f"{workdir} already holds {start_step} >= {config.steps} steps; nothing to train.")

    if evaluate is not None and not any(int(r["step"]) == config.steps for r in eval_log.rows()):
        monitor.run_evaluation()
    summary = {"workdir": str(workdir), "step": int(step_variable.numpy()), "checkpoint": manager.latest_checkpoint}
    if export:
        from serving.export import export_saved_model

        summary["export"] = export_saved_model(agent, str(workdir / "export"))
        log(f"Exported SavedModel to {summary['export']}.")
    return summary


def validation_dataset(data_dir, config: SORLConfig) -> tf.data.Dataset:
    """The validation split as fit evaluates it at every log boundary, with tf.data's autotuning off.

    Keras drops its validation iterator and makes a new one at each evaluation. With autotuning on,
    dropping an iterator waits for tf.data's optimisation thread to wake from its sleep: in the
    paper-size cube run (TensorFlow 2.21) that idled 26 of 38 log boundaries for about 31 s each
    (BENCHMARKS.md). A few batches gathered from an in-memory table need no tuning.
    """
    dataset = reader.make_dataset(
        str(data_dir), split="val", task=config.task, batch_size=config.batch_size, seed=config.seed
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _fit(agent, config: SORLConfig, data_dir: Path, val_ds, monitor: TrainingMonitor, start_step: int,
         validation_batches: int) -> None:
    """agent.fit from start_step to config.steps in "epochs" of log_every steps.

    A run interrupted between log boundaries resumes with one short epoch back onto them. Each
    fit call reshuffles the data with a seed from its first step: the data order is not
    checkpointed, the model state is.
    """
    step = start_step
    while step < config.steps and monitor.interrupted is None and not monitor.failure:
        window = config.log_every
        epoch_steps = window - step % window  # == window except right after an off-grid resume
        train_ds = reader.make_dataset(
            str(data_dir), split="train", task=config.task, batch_size=config.batch_size, seed=config.seed + step
        )
        agent.fit(
            train_ds,
            initial_epoch=step // window,
            epochs=step // window + 1 if epoch_steps != window else config.steps // window,
            steps_per_epoch=epoch_steps,
            validation_data=val_ds,
            validation_steps=validation_batches,
            callbacks=[monitor],
            shuffle=False,  # the reader shuffles (seeded); Keras would only warn that it cannot
            verbose=0,
        )
        step = monitor.step


class _stop_on_signals:
    """While active, the first SIGINT/SIGTERM asks `monitor` to stop after the step in flight;
    a second one is handled as usual (KeyboardInterrupt, or termination)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, monitor: TrainingMonitor):
        self.monitor = monitor
        self.previous = {}

    def _handle(self, signal_number, frame):
        if self.monitor.interrupted is None:
            self.monitor.request_stop(signal_number)
            return
        self.__exit__()
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal_number)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    manager.checkpoint.step.assign(step)
    return manager.save(checkpoint_number=step)


def _checkpoint_step(manager: tf.train.CheckpointManager) -> int:
    return int(manager.latest_checkpoint.rsplit("-", 1)[-1])
