# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Signals while an engine closes: a first one waits for the close, bounded by ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` (a
watchdog thread acts when the main thread hangs in C); a second one ends the process at once.

The scenarios are in ``scenarios/close_scenarios.py``.
"""

import os
import signal
import time

import pytest

MODULE = 'close_scenarios.py'


def test_one_sigint_from_a_watchdog_timer_ends_a_close_that_hangs_at_exit(
    start_scenario,
    finish,
    marks,
    tmp_path,
):
    """LLM Foundry's RunTimeoutCallback: one SIGINT after fit_end breaks a hung close, as on upstream."""
    started = time.monotonic()
    proc = start_scenario(MODULE, 'watchdog_after_fit', env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'})
    _, err = finish(proc, timeout=150)
    assert marks(tmp_path, 'fitted') == {'rank0': ['']}, err
    assert marks(tmp_path, 'close') == {'rank0': ['']}, err
    assert time.monotonic() - started < 120, err  # the close alone would take 300 s
    # Upstream: 0, the program's status (its SystemExit(130) is "ignored in atexit callback"). The fork: 130, the
    # exit once the close timeout ran out (asserted with its stderr line below).
    assert proc.returncode in (0, 130), err


def test_a_close_that_outlasts_the_timeout_is_named_on_stderr(start_scenario, finish, tmp_path):
    proc = start_scenario(MODULE, 'watchdog_after_fit', env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'})
    _, err = finish(proc, timeout=150)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if 'has not finished after 3 s' in line]
    assert len(lines) == 1, err
    assert lines[0].startswith('Composer: SIGINT arrived while the engine was closing'), lines
    assert 'still in Probe.close' in lines[0] and 'COMPOSER_SIGNAL_CLOSE_TIMEOUT' in lines[0], lines
    assert 'post_close.rank0' not in os.listdir(tmp_path)


@pytest.mark.parametrize('blocks', ['sleep', 'in C'])
def test_one_sigterm_during_a_hung_trainer_close_exits_143_within_the_timeout(
    start_scenario,
    wait_for_files,
    finish,
    tmp_path,
    blocks,
):
    """Also when the main thread waits in C code, where no Python signal handler runs: the watchdog thread acts."""
    proc = start_scenario(
        MODULE,
        'hung_trainer_close',
        {'blocks': blocks},
        env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'},
    )
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=60)
    assert proc.returncode == 143, err
    assert 3 <= time.monotonic() - sent < 30, err
    assert 'SIGTERM arrived while the engine was closing, and the close has not finished after 3 s' in err
    assert 'still in Probe.close' in err
    if blocks == 'in C':
        assert 'waiting in block_in_c' in err


def test_a_second_signal_during_a_close_blocked_in_c_ends_the_process_at_once(
    start_scenario,
    wait_for_files,
    finish,
    tmp_path,
):
    proc = start_scenario(
        MODULE,
        'hung_trainer_close',
        {'blocks': 'in C'},
        env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '120'},
    )
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 60, err  # not the 120 s timeout
    assert 'received SIGINT again while stopping' in err


def test_an_invalid_close_timeout_is_a_value_error_at_construction(run_scenario):
    scenario = run_scenario(
        'flag_scenarios.py',
        'construction_error',
        {
            'trainer_kwargs': {
                'recipe': 'deterministic',
            },
            'error': 'ValueError',
        },
        env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': 'soon'},
    )
    assert scenario.returncode == 0, scenario
    assert "COMPOSER_SIGNAL_CLOSE_TIMEOUT='soon' is not valid" in scenario.results['error']


def test_asyncio_keeps_its_signal_wakeup_while_a_trainer_holds_the_handlers(run_scenario):
    """Composer's watchdog takes the wakeup fd and passes every signal on to the one that was set before."""
    scenario = run_scenario(MODULE, 'asyncio_keeps_its_wakeup_fd')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'seen': True, 'replaced': True, 'restored': True}, scenario


SECOND_SIGNALS = pytest.mark.parametrize(
    'second,blocked_in',
    [
        (signal.SIGTERM, 'sleep'),
        (signal.SIGINT, 'sleep'),
        (signal.SIGTERM, 'join'),
    ],
)


@SECOND_SIGNALS
def test_second_signal_during_a_blocking_close_ends_the_process_at_once(
    second_signal_during_a_blocking_close,
    checkpoints,
    tmp_path,
    second,
    blocked_in,
):
    second_signal_during_a_blocking_close(second, blocked_in)
    assert checkpoints(tmp_path / 'checkpoints') == []


@pytest.mark.parametrize('first', [signal.SIGTERM, signal.SIGINT])
def test_first_signal_during_trainer_close_takes_effect_once_it_has_closed(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    tmp_path,
    first,
):
    """The callbacks' close() (a flush, an upload) is not cut short, runs once, and the signal still takes effect."""
    proc = start_scenario(MODULE, 'slow_close_after_fit', {'close': True})
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    proc.send_signal(first)
    _, err = finish(proc, timeout=60)
    assert marks(tmp_path, 'close') == {'rank0': ['']}, err  # once: not again at interpreter exit
    assert marks(tmp_path, 'closed') == {'rank0': ['']}, err
    assert marks(tmp_path, 'post_close') == {'rank0': ['']}, err
    effect = 'SystemExit 143' if first == signal.SIGTERM else 'KeyboardInterrupt'
    assert marks(tmp_path, 'raised') == {'rank0': [effect]}, err
    assert f'received {signal.Signals(first).name} while the engine closes' in err
    if first == signal.SIGTERM:
        assert proc.returncode == 143, err


def test_first_signal_while_engines_close_at_interpreter_exit_lets_the_exit_go_on(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    tmp_path,
):
    """The program ended without closing its trainer: the exit hook's close finishes once, without a traceback."""
    proc = start_scenario(MODULE, 'slow_close_after_fit', {'close': False})
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=60)
    assert marks(tmp_path, 'closed') == {'rank0': ['']}, err
    assert marks(tmp_path, 'post_close') == {'rank0': ['']}, err
    assert 'received SIGTERM while the engine closes; the interpreter exits once it has closed' in err
    assert 'Traceback' not in err and 'Exception ignored' not in err, err
    assert proc.returncode == 0, err  # the program's own status: it had ended normally
