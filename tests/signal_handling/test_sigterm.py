# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGTERM during ``fit()``: a graceful exit with code 143, or the OS default when signal handling is disabled.

The scenario (``scenarios/sigterm_scenarios.py``) trains "forever", slowly, and records the closing callbacks in
marker files.
"""

import os
import platform
import signal
import subprocess
import time

import pytest

MODULE = 'sigterm_scenarios.py'

#: The number of the ``read`` system call, as ``/proc/<pid>/syscall`` shows it.
READ_SYSCALL = {'x86_64': 0, 'aarch64': 63}.get(platform.machine())


def _reads_stdin(pid: int) -> bool:
    """Whether the main thread of ``pid`` waits in ``read(0, ...)``."""
    try:
        with open(f'/proc/{pid}/syscall') as f:
            fields = f.read().split()
    except OSError as e:
        pytest.skip(f'/proc/<pid>/syscall cannot be read here ({e}): it shows where the process waits')
    return len(fields) > 1 and fields[0] == str(READ_SYSCALL) and int(fields[1], 16) == 0


def _markers(tmp_path):
    return sorted(p.name for p in tmp_path.glob('*.rank*') if not p.name.startswith('training'))


def test_sigterm_during_fit_exits_143_after_closing(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(MODULE, 'long_fit')
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0'], err


@pytest.mark.skipif(READ_SYSCALL is None or not os.path.exists('/proc/self/syscall'), reason='needs Linux /proc')
def test_a_signal_after_finalization_does_not_change_the_exit_status(start_scenario, wait_for_files, tmp_path):
    """Once a SIGTERM decided on 143, another one during the C-level teardown after finalization changes nothing.

    CPython's finalization puts the OS default back over every Python handler. A launcher's clean-up SIGTERM that
    reached a rank there killed it by the signal (-15, and the launcher exited 241) instead of letting it exit 143.
    The scenario waits in a native exit handler (after finalization) until its stdin is closed.
    """
    proc = start_scenario(MODULE, 'long_fit', {'read_stdin_at_exit': True}, stdin=subprocess.PIPE)
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 120
    while not _reads_stdin(proc.pid):
        assert proc.poll() is None, proc.communicate(timeout=60)
        assert time.monotonic() < deadline, 'the process did not reach its native exit handler'
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # after finalization, where no Python handler runs any more
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdin = None
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0'], err


def test_sigterm_with_signal_handling_disabled_is_the_os_default(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(MODULE, 'long_fit', {'trainer_kwargs': {'enable_signal_handling': False}})
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert _markers(tmp_path) == []


def test_users_sigterm_handler_is_called_during_fit(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(MODULE, 'long_fit', {'users_handler_exits': 7})
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert (tmp_path / 'user_handler.rank0').read_text() == 'called'
    # The user's handler exited through Python, so the engine still closed at exit.
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0', 'user_handler.rank0']


def test_composer_launcher_sigterm_closes_every_rank(
    start_scenario,
    wait_for_files,
    composer_launcher,
    rank_logs,
    tmp_path,
):
    """SIGTERM to the launcher: it SIGTERMs its 2 CPU ranks (gloo), each closes its engine, all exit in time."""
    launcher = composer_launcher()
    proc = start_scenario(MODULE, 'long_fit', {'marker_dir': str(tmp_path)}, launcher=launcher)
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    logs = rank_logs()
    assert _markers(tmp_path) == ['close.rank0', 'close.rank1', 'post_close.rank0', 'post_close.rank1'], logs + err
    assert proc.returncode == 143, logs + err
    # The launcher waits up to 30 s before SIGKILL; ranks that close by themselves finish long before that.
    assert elapsed < 20, (elapsed, logs + err)
