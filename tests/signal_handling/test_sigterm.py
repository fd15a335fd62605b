# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGTERM during ``fit()``: a graceful exit with code 143, or the OS default when signal handling is disabled.

The scenario (``scenarios/sigterm_scenarios.py``) trains "forever", slowly, and records the closing callbacks in
marker files.
"""

import signal
import time

MODULE = 'sigterm_scenarios.py'


def _markers(tmp_path):
    return sorted(p.name for p in tmp_path.glob('*.rank*') if not p.name.startswith('training'))


def test_sigterm_during_fit_exits_143_after_closing(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(MODULE, 'long_fit')
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
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
