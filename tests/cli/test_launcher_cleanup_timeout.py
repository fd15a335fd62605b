# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``composer --cleanup_timeout``: how long the launcher waits for its ranks after it was signalled, before SIGKILL."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from composer.cli.launcher import _get_parser

SLOW_TO_SAVE = Path(__file__).resolve().parent / 'slow_to_save.py'
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(folder: Path, save_seconds: float, cleanup_timeout: Optional[str]) -> subprocess.Popen:
    command = [COMPOSER, '-n', '2', '--master_addr', '127.0.0.1', '--master_port', str(_free_port())]
    if cleanup_timeout is not None:
        command += ['--cleanup_timeout', cleanup_timeout]
    command += [str(SLOW_TO_SAVE), str(folder), str(save_seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder)


def _sigterm_when_ready(proc: subprocess.Popen, folder: Path) -> tuple[int, str, float]:
    """SIGTERM to the launcher once both ranks are ready; its exit code, its output and seconds until it exited."""
    deadline = time.monotonic() + 120
    while not all((folder / f'ready.rank{rank}').is_file() for rank in (0, 1)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f'the ranks did not start:\n{proc.communicate()[0]}')
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f'the launcher did not exit:\n{proc.communicate()[0]}')
    return proc.returncode, output, time.monotonic() - signalled


def _checkpoint(folder: Path, name: str, rank: int) -> Optional[dict]:
    path = folder / f'checkpoint-{name}.rank{rank}.pt'
    return torch.load(path) if path.exists() else None


@pytest.mark.timeout(180)
def test_a_write_longer_than_the_cleanup_timeout_is_cut_and_the_previous_checkpoint_stays(tmp_path):
    returncode, output, seconds = _sigterm_when_ready(_launch(tmp_path, 8, '1'), tmp_path)
    assert 'Waiting up to 1 seconds for all training processes to terminate' in output
    assert seconds < 8, output  # SIGKILL after the timeout, before the write was done
    for rank in (0, 1):
        assert _checkpoint(tmp_path, 'final', rank) is None, output
        previous = _checkpoint(tmp_path, 'previous', rank)
        assert previous is not None and previous['step'] == 1
    assert returncode != 0, output


@pytest.mark.timeout(180)
def test_a_larger_cleanup_timeout_lets_the_ranks_finish_their_write(tmp_path):
    returncode, output, seconds = _sigterm_when_ready(_launch(tmp_path, 3, '60'), tmp_path)
    assert 'Waiting up to 60 seconds for all training processes to terminate' in output
    for rank in (0, 1):
        final = _checkpoint(tmp_path, 'final', rank)
        assert final is not None and torch.equal(final['weights'], torch.arange(1000) * 2), output
    assert returncode == 143, output
    assert seconds < 60, output  # the launcher exits once its ranks have, not at the timeout


@pytest.mark.timeout(180)
def test_the_default_cleanup_timeout_is_30_seconds(tmp_path):
    returncode, output, _ = _sigterm_when_ready(_launch(tmp_path, 0, None), tmp_path)
    assert 'Waiting up to 30 seconds for all training processes to terminate' in output
    assert returncode == 143, output


@pytest.mark.parametrize('value', ['-1', 'soon', 'inf', 'nan', '1e300'])
def test_a_cleanup_timeout_that_is_not_a_number_of_seconds_is_refused(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        _get_parser().parse_args(['--cleanup_timeout', value, 'train.py'])
    assert exit_info.value.code == 2
    assert f"argument --cleanup_timeout: '{value}' is not a number of seconds >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(('value', 'seconds'), [('0', 0.0), ('120.5', 120.5), ('1e3', 1000.0)])
def test_a_cleanup_timeout_is_any_finite_number_of_seconds(value, seconds):
    assert _get_parser().parse_args(['--cleanup_timeout', value, 'train.py']).cleanup_timeout == seconds
