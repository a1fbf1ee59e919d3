"""The Keras callbacks of the training loop, one per role, and the state they share.

The training driver (pipeline/training.py) calls them as Keras' fit does, in this order, so after
every step the run checks the losses are finite before anything is saved (only finite weights are
ever saved), and at a log boundary it logs, then checkpoints, then evaluates:

    [state, NonFiniteGuard, MetricsLogger, ProgressReporter, PeriodicCheckpoint, PeriodicEvaluation]

Under several workers only the chief gets MetricsLogger and PeriodicEvaluation (and a progress
bar); every worker gets the others, with the same all-reduced losses, so they stop and save at the
same steps. A log boundary is the end of one of the loop's "epochs" (every multiple of
`schedule.log_every`, and `gradient_steps`). Checkpoints and evaluations happen at the exact
multiples of their own periods, inside a window or at its end, so no period has to divide another. A run stopped early (a signal,
a non-finite loss) ends its epoch off the log grid: that step is still logged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from data import files

EVAL_BUDGETS = (1, 2, 4, 8)  # SPEC 5: the evaluation reports every k in {1, 2, 4, 8} Euler steps
PROGRESS_METRICS = ("critic/loss", "actor/fm_loss", "actor/sc_loss", "actor/q_loss", "critic/q_mean")


class TrainingState(keras.callbacks.Callback):
    """The run's shared state: gradient steps done, why it stops, and the steps/s of the last window.

    First in fit's callback list, so the others see the step just taken.
    """

    def __init__(self, start_step: int):
        super().__init__()
        self.step = start_step
        self.failure: Optional[str] = None  # set by NonFiniteGuard
        self.stop_signal: Optional[int] = None  # set on SIGINT/SIGTERM (pipeline/interrupts.py)
        self.steps_per_second = 0.0
        self._window_start = (time.perf_counter(), start_step)

    @property
    def stopping(self) -> bool:
        return self.failure is not None or self.stop_signal is not None

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` spent on something else (an evaluation) out of the window's steps/s."""
        t0, s0 = self._window_start
        self._window_start = (t0 + seconds, s0)

    def request_stop(self, signal_number: int) -> None:
        """Stop after the step in flight; safe to call from a signal handler."""
        self.stop_signal = signal_number

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.stop_signal is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        t0, s0 = self._window_start
        self.steps_per_second = (self.step - s0) / max(now - t0, 1e-9)
        self._window_start = (now, self.step)


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss, naming it and the last good checkpoint."""

    def __init__(self, state: TrainingState, manager: tf.train.CheckpointManager):
        super().__init__()
        self.state = state
        self.manager = manager

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: v for k, v in (logs or {}).items() if k.endswith("loss") and not math.isfinite(float(v))}
        if bad:
            self.state.failure = (
                f"non-finite loss at step {self.state.step}: "
                + ", ".join(f"{k}={float(v)}" for k, v in sorted(bad.items()))
                + f"; the last good checkpoint is {self.manager.latest_checkpoint}"
            )
            self.model.stop_training = True


class MetricsLogger(keras.callbacks.Callback):
    """The window's training and validation metrics and steps/s, to TensorBoard and RUN/metrics.csv."""

    def __init__(self, state: TrainingState, writer, metrics_csv: Path):
        super().__init__()
        self.state = state
        self.writer = writer
        self.metrics_csv = Path(metrics_csv)

    def on_epoch_end(self, epoch, logs=None):
        if self.state.failure:
            return
        logs = {**(logs or {}), "perf/steps_per_second": self.state.steps_per_second}
        with self.writer.as_default(step=self.state.step):
            for name, value in logs.items():
                # Keras names validation metrics val_<name>; TensorBoard groups tags by their first '/'.
                tf.summary.scalar(name if not name.startswith("val_") else "val/" + name[4:], float(value))
        self.writer.flush()
        row = {"step": self.state.step, **{k: float(v) for k, v in logs.items()}}
        files.append_csv_rows(self.metrics_csv, list(row), [row])


class ProgressReporter(keras.callbacks.Callback):
    """A tqdm bar, or without one (logs, CI) one line per log window with steps/s, ETA and losses.

    quiet: neither (a non-chief worker, whose chief reports the same steps); `say` still prints.
    """

    def __init__(self, state: TrainingState, total_steps: int, show_bar: bool = True, quiet: bool = False):
        super().__init__()
        self.state = state
        self.total_steps = total_steps
        self.show_bar = show_bar and not quiet
        self.quiet = quiet
        self._bar = None

    def on_train_begin(self, logs=None):
        if self.show_bar and self._bar is None:  # fit runs twice after an off-grid resume: one bar
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step", dynamic_ncols=True,
                             desc="train", smoothing=0.05)

    def say(self, line: str) -> None:
        """A log line that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        self._bar.update(1)
        if self.state.step % 10 == 0 or self.state.failure:
            self._bar.set_postfix_str(" ".join(
                f"{k.split('/')[0][0]}/{k.split('/')[1]}={float(v):.3g}" for k, v in (logs or {}).items()
                if k in PROGRESS_METRICS
            ))

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is None and not self.state.failure and not self.quiet:
            self.say(self.progress_line(logs or {}))

    def progress_line(self, logs: dict) -> str:
        """'step 1000/80000 (1.2%) 8.1 steps/s ETA 2:42:33 critic/loss=... actor/fm_loss=...'."""
        from tqdm import tqdm

        step, rate = self.state.step, self.state.steps_per_second
        remaining = max(self.total_steps - step, 0)
        # tqdm's own formatter (the bar's): hours past 24 stay hours, where strftime would wrap.
        eta = tqdm.format_interval(remaining / rate) if rate > 0 else "?"
        losses = " ".join(f"{k}={float(logs[k]):.4g}" for k in PROGRESS_METRICS if k in logs)
        return (f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.1f}%) "
                f"{rate:.2f} steps/s ETA {eta} {losses}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """Saves RUN/checkpoints/ckpt-<step>, with the checkpoint's own `step` set to it."""
    manager.checkpoint.step.assign(step)
    return manager.save(checkpoint_number=step)


class AtMultiples(keras.callbacks.Callback):
    """Calls `act(step)` at every multiple of `every` gradient steps (0: never), never after a
    non-finite loss: right after the step, or, when that step ends a log window, after the window's
    metrics are logged (on_epoch_end), so a log boundary still logs before it saves or evaluates."""

    def __init__(self, state: TrainingState, every: int):
        super().__init__()
        self.state = state
        self.every = every
        self._done_at = None  # the step last acted on: a stop inside a window ends the epoch there too

    def act(self, step: int) -> None:
        raise NotImplementedError

    def _maybe_act(self) -> None:
        step = self.state.step
        if not self.state.failure and self.every > 0 and step % self.every == 0 and step != self._done_at:
            self._done_at = step
            self.act(step)

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 != (self.params or {}).get("steps"):  # the window's last step waits for on_epoch_end
            self._maybe_act()

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_act()


class PeriodicCheckpoint(AtMultiples):
    """A checkpoint every `every` gradient steps (0: none), never after a non-finite loss."""

    def __init__(self, state: TrainingState, manager: tf.train.CheckpointManager, every: int):
        super().__init__(state, every)
        self.manager = manager

    def act(self, step: int) -> None:
        save_checkpoint(self.manager, step)


def can_evaluate(data, say: Callable[[str], None] = print) -> bool:
    """Whether a run on `data` (a pipeline.config.DataSpec) has an env to evaluate in; says once why not."""
    if data.env is not None or data.eval_env is not None:
        return True
    say("No evaluation env: the dataset names none (metadata.json 'eval_env') and no --eval_env was given; "
        "training without in-env evaluation.")
    return False


class PeriodicEvaluation(AtMultiples):
    """Every `every` gradient steps (0: only when `evaluate` is called), each Euler-step budget k in
    `budgets` on `episodes` real-environment episodes: rows to `eval_log`, scalars to TensorBoard.

    An OGBench run reports success rate and mean return per k; a run on a dataset's own rewards the
    mean and std of the undiscounted return and, when its `dataset` record (pipeline.config.dataset_record)
    has reference scores, the normalised score, with the dataset's mean and best episode returns
    as reference lines in the plot.
    The episodes' seed is the same at every step, so learning curves compare like with like.
    """

    def __init__(self, state: TrainingState, agent, data, episodes: int, seed: int, every: int, eval_log,
                 writer, say: Callable[[str], None] = print, budgets: Sequence[int] = EVAL_BUDGETS,
                 dataset: Optional[dict] = None):
        super().__init__(state, every)
        from pipeline import environments, policies, scores  # here: the environments load only when a run evaluates

        self.data = data
        self.env = environments.evaluation_env(data)
        self.own_rewards = data.env is None
        self.reference = scores.ReturnReference.from_record(dataset)
        self.episodes = episodes
        self.seed = seed
        self.eval_log = eval_log
        self.writer = writer
        self.say = say
        # Traced once, reading the agent's current weights at every call: no re-tracing per evaluation.
        self.policies = {k: policies.make_agent_policy(agent, euler_steps=k) for k in budgets}

    def act(self, step: int) -> None:
        start = time.perf_counter()
        self.evaluate(step)
        self.state.exclude(time.perf_counter() - start)  # steps/s measures training only

    def evaluate(self, step: int) -> list[dict]:
        from pipeline import rollouts

        rows = []
        for k, policy in self.policies.items():
            start = time.perf_counter()
            result = rollouts.evaluate_policy(
                policy, env=self.env, task=self.data.task, episodes=self.episodes, seed=self.seed,
                episode_length=self.data.episode_length,
            )
            seconds = round(time.perf_counter() - start, 3)
            if self.own_rewards:
                rows.append(dict(
                    step=step, steps_k=k, num_samples=1, mean_return=float(result["mean_return"]),
                    return_std=float(result["return_std"]),
                    normalized_score=self.reference.normalized_score(result["mean_return"]),
                    episodes=int(result["episodes"]), seconds=seconds,
                ))
            else:
                rows.append(dict(
                    step=step, task=self.data.task, steps_k=k, num_samples=1,
                    success_rate=float(result["success_rate"]), mean_return=float(result["mean_return"]),
                    episodes=int(result["episodes"]), seconds=seconds,
                ))
        self.eval_log.append(rows)
        if self.own_rewards:
            self.eval_log.plot(f"{self.data.eval_env} (the dataset's own rewards)", reference=self.reference)
        else:
            self.eval_log.plot(f"{self.data.env} task {self.data.task}")
        with self.writer.as_default(step=step):
            for r in rows:
                k = r["steps_k"]
                tf.summary.scalar(f"eval/return_k{k}", r["mean_return"])
                if not self.own_rewards:
                    tf.summary.scalar(f"eval/success_k{k}", r["success_rate"])
                    continue
                tf.summary.scalar(f"eval/return_std_k{k}", r["return_std"])
                if self.reference.has_scores:
                    tf.summary.scalar(f"eval/normalized_score_k{k}", r["normalized_score"])
        self.writer.flush()
        if self.own_rewards:
            score = " ".join(f"k={r['steps_k']}:{r['normalized_score']:.1f}" for r in rows)
            self.say(f"step {step}: return " + " ".join(
                f"k={r['steps_k']}:{r['mean_return']:.1f}+-{r['return_std']:.1f}" for r in rows)
                + (f"; normalised score {score}" if self.reference.has_scores else ""))
        else:
            self.say(f"step {step}: success " + " ".join(
                f"k={r['steps_k']}:{100 * r['success_rate']:.0f}%" for r in rows))
        return rows
