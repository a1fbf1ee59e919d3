"""pipeline/interrupts.py: the first SIGTERM asks to stop; a second one is handled as usual."""
import os
import signal

import pytest

from pipeline import interrupts


def test_first_signal_requests_a_stop_and_the_second_is_handled_as_before():
    requested = []
    seen_by_previous = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: seen_by_previous.append(number))
    try:
        with interrupts.StopOnSignals(requested.append):
            os.kill(os.getpid(), signal.SIGTERM)
            assert requested == [signal.SIGTERM] and seen_by_previous == []
            os.kill(os.getpid(), signal.SIGTERM)  # the handler that was there before gets it
            assert requested == [signal.SIGTERM] and seen_by_previous == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_second_sigint_raises_keyboard_interrupt_and_the_block_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.StopOnSignals(lambda number: None):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_messages_name_the_signal_the_step_and_how_to_resume():
    assert interrupts.stopping_message(signal.SIGTERM, 7).startswith("SIGTERM: stopping after step 7 and saving")
    error = interrupts.TrainingInterrupted(signal.SIGINT, 6, "run/checkpoints/ckpt-6")
    assert str(error) == ("stopped by SIGINT at step 6; saved run/checkpoints/ckpt-6. "
                          "Rerun the same command to resume from there.")
