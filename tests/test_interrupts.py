"""SIGTERM and Ctrl-C both raise Interrupted (with the signal) while a command runs; handlers come back after."""
import os
import signal

import pytest

from nsa_bench.interrupts import Interrupted, as_keyboard_interrupt, exit_code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_become_interrupted(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt) as info:
        with as_keyboard_interrupt():
            os.kill(os.getpid(), signum)
            for _ in range(10**6):  # the handler runs between bytecodes
                pass
    assert isinstance(info.value, Interrupted) and info.value.signum == signum
    assert exit_code(info.value) == 128 + signum
    assert signal.getsignal(signum) is before


def test_a_bare_keyboard_interrupt_is_ctrl_c():
    assert exit_code(KeyboardInterrupt()) == 130
