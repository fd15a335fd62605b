# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The decisions of Composer's signal handler, called in-process on a state of its own: no signal is sent.

The subprocess tests (``test_sigterm.py``, ``test_close.py``, ...) check the same paths end to end with real signals.
"""

import os
import signal
import time

import pytest

from composer.utils import signal_handling
from composer.utils.signal_handling import DUPLICATE_SIGNAL_WINDOW, _ComposerSignalHandler, _ProcessState


def _handler(previous, state: _ProcessState) -> _ComposerSignalHandler:
    return _ComposerSignalHandler(previous, state)


def test_the_replaced_disposition_is_classified_once_at_install():
    state = _ProcessState()
    assert _handler(signal.SIG_IGN, state).kind == _ComposerSignalHandler.IGNORED
    assert _handler(signal.SIG_DFL, state).kind == _ComposerSignalHandler.EXIT
    assert _handler(signal.default_int_handler, state).kind == _ComposerSignalHandler.KEYBOARD_INTERRUPT
    assert _handler(lambda signum, frame: None, state).kind == _ComposerSignalHandler.CALLABLE
    assert not _handler(signal.SIG_IGN, state).stops_the_process
    assert _handler(signal.SIG_DFL, state).stops_the_process


def test_the_os_default_becomes_an_exit_with_128_plus_signum_and_arms_the_force_quit():
    state = _ProcessState()
    with pytest.raises(SystemExit) as exit_info:
        _handler(signal.SIG_DFL, state)(signal.SIGTERM, None)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert state.exit_pending and state.first_signal[1] == signal.SIGTERM
    assert state.is_stopping()


def test_ignored_stays_ignored_and_a_users_handler_is_called_without_arming_anything():
    state = _ProcessState()
    assert _handler(signal.SIG_IGN, state)(signal.SIGTERM, None) is None
    calls = []
    assert _handler(lambda signum, frame: calls.append(signum) or 'theirs', state)(signal.SIGTERM, None) == 'theirs'
    assert calls == [signal.SIGTERM]
    assert not state.is_stopping() and state.first_signal == (0.0, 0)


def test_pythons_sigint_handler_still_raises_keyboard_interrupt():
    state = _ProcessState()
    with pytest.raises(KeyboardInterrupt):
        _handler(signal.default_int_handler, state)(signal.SIGINT, None)
    assert state.first_signal[1] == signal.SIGINT and not state.exit_pending


def test_an_intercepted_sigterm_calls_the_stop_instead_of_exiting_and_sigint_is_not_intercepted():
    state = _ProcessState()
    stops = []
    state.sigterm_stops = (stops.append,)
    assert _handler(signal.SIG_DFL, state)(signal.SIGTERM, None) is None
    assert stops == [signal.SIGTERM] and state.exit_pending
    state.forget_signals()
    with pytest.raises(SystemExit):
        _handler(signal.SIG_DFL, state)(signal.SIGINT, None)
    assert stops == [signal.SIGTERM]


def test_a_first_signal_while_the_main_thread_closes_is_deferred_to_the_end_of_the_close(capfd):
    state = _ProcessState()
    state.close_depth = state.main_thread_close_depth = 2  # Engine.close() inside Engine._close()
    handler = _handler(signal.SIG_DFL, state)
    assert handler(signal.SIGTERM, None) is None
    assert state.deferred_signal == (signal.SIGTERM, handler)
    assert 'received SIGTERM while the engine closes; exit code 143 once it has closed' in capfd.readouterr().err


def test_a_repeat_within_the_window_is_one_delivery_and_a_second_signal_force_quits(monkeypatch):
    state = _ProcessState()
    state.exit_pending = True
    state.first_signal = (time.monotonic(), signal.SIGTERM)
    quits = []
    monkeypatch.setattr(signal_handling, '_force_quit', quits.append)
    handler = _handler(signal.SIG_DFL, state)
    assert handler(signal.SIGTERM, None) is None  # the same signal, delivered twice (SLURM and the launcher)
    assert quits == []
    with pytest.raises(SystemExit):  # _force_quit is replaced: the handler then goes on as for a first signal
        handler(signal.SIGINT, None)
    assert quits == [signal.SIGINT]
    state.first_signal = (time.monotonic() - 2 * DUPLICATE_SIGNAL_WINDOW, signal.SIGTERM)
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)  # the same signal again, later: a second one
    assert quits == [signal.SIGINT, signal.SIGTERM]


def test_in_a_forked_child_that_owns_nothing_a_users_handler_is_still_called():
    state = _ProcessState(owner_pid=os.getpid() + 1)  # as if the handlers were inherited from a parent
    assert state.is_inherited()
    calls = []
    _handler(lambda signum, frame: calls.append(signum), state)(signal.SIGTERM, None)
    assert calls == [signal.SIGTERM] and not state.is_stopping()


def test_ownership_and_keeping_the_handlers_until_exit():
    state = _ProcessState(owner_pid=os.getpid() + 1, holders=2, kept_until_exit=True)
    state.take_ownership()  # a forked child that creates an engine: the parent's leases are not its own
    assert (state.owner_pid, state.holders, state.kept_until_exit) == (os.getpid(), 0, False)
    assert not state.is_held()
    state.kept_until_exit = True
    assert state.is_held()
