"""Stopping a training run cleanly on SIGINT or SIGTERM.

The first signal asks the loop to stop after the gradient step in flight (a `train_step` is never
cut in half) and to checkpoint that step; the run then raises `TrainingInterrupted`, and rerunning
the same command resumes there. A second signal is handled as usual: KeyboardInterrupt for
SIGINT, termination for SIGTERM, losing the steps since the last checkpoint. Under several
workers the first signal any of them receives stops all of them after the same step (PendingSignal).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint of its last finished step."""

    def __init__(self, signal_number: int, step: int, checkpoint: str):
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signal_number).name} at step {step}; saved {checkpoint}. "
            "Rerun the same command to resume from there."
        )


def stopping_message(signal_number: int, next_step: int) -> str:
    """What the run says when the first signal arrives."""
    return (f"{signal.Signals(signal_number).name}: stopping after step {next_step} and saving a checkpoint "
            "(send it again to stop at once, losing the steps since the last checkpoint)")


class PendingSignal:
    """The first stop signal this worker received, kept until the workers agree on stopping.

    Under several workers a worker cannot stop alone (the others would wait for it in the next
    collective): the training driver sends `signal` with every step and every worker stops after
    the step whose all-reduced signal is non-zero. Pass `record` to StopOnSignals.
    """

    def __init__(self):
        self.signal = 0  # 0: none received

    def record(self, signal_number: int) -> None:
        if not self.signal:
            self.signal = int(signal_number)


class StopOnSignals:
    """While active, the first SIGINT/SIGTERM calls `request_stop(signal_number)`; a second one is
    handled as it would be without this block."""

    def __init__(self, request_stop: Callable[[int], None]):
        self.request_stop = request_stop
        self.received: Optional[int] = None  # the first signal's number
        self.previous = {}

    def _handle(self, signal_number, frame):
        if self.received is None:
            self.received = signal_number
            self.request_stop(signal_number)
            return
        self.__exit__()
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal_number)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
