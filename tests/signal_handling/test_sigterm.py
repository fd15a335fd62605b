# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGTERM during ``fit()``: a graceful exit with code 143, or the OS default when signal handling is disabled."""

import os
import signal
import socket
import sys
import time

import pytest

#: Trains "forever" (slowly), announcing progress and recording the closing callbacks in marker files.
LONG_FIT = """
import time
from composer import Callback

marker_dir = sys.argv[1] if len(sys.argv) > 1 else '.'
rank = os.environ.get('RANK', '0')

def mark(name):
    with open(os.path.join(marker_dir, f'{name}.rank{rank}'), 'w') as f:
        f.write(str(os.getpid()))

class Recorder(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            mark('training')
        time.sleep(0.05)

    def close(self, state, logger):
        mark('close')

    def post_close(self):
        mark('post_close')

trainer = make_trainer(callbacks=[Recorder()], max_duration='100000ba', **TRAINER_KWARGS)
trainer.fit()
"""


def _wait_for(path_glob, count, proc, timeout=120.0):
    import glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(glob.glob(path_glob)) >= count:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f'process exited early with {proc.returncode}\nstdout: {out}\nstderr: {err}')
        time.sleep(0.1)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f'timed out waiting for {path_glob}\nstdout: {out}\nstderr: {err}')


def _markers(tmp_path):
    return sorted(p.name for p in tmp_path.glob('*.rank*') if not p.name.startswith('training'))


def test_sigterm_during_fit_exits_143_after_closing(start_scenario, tmp_path):
    proc = start_scenario('TRAINER_KWARGS = {}\n' + LONG_FIT)
    _wait_for(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0'], err


def test_sigterm_with_signal_handling_disabled_is_the_os_default(start_scenario, tmp_path):
    proc = start_scenario('TRAINER_KWARGS = {"enable_signal_handling": False}\n' + LONG_FIT)
    _wait_for(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert _markers(tmp_path) == []


def test_users_sigterm_handler_is_called_during_fit(start_scenario, tmp_path):
    proc = start_scenario(
        """
def users_handler(signum, frame):
    with open('user_handler.rank0', 'w') as f:
        f.write('called')
    sys.exit(7)

signal.signal(signal.SIGTERM, users_handler)
TRAINER_KWARGS = {}
""" + LONG_FIT,
    )
    _wait_for(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert (tmp_path / 'user_handler.rank0').read_text() == 'called'
    # The user's handler exited through Python, so the engine still closed at exit.
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0', 'user_handler.rank0']


def test_composer_launcher_sigterm_closes_every_rank(start_scenario, tmp_path):
    """SIGTERM to the launcher: it SIGTERMs its 2 CPU ranks (gloo), each closes its engine, all exit in time."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    launcher = [
        os.path.join(os.path.dirname(sys.executable), 'composer'),
        '-n',
        '2',
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(port),
        '--stdout',
        str(tmp_path / 'rank{rank}.stdout'),
        '--stderr',
        str(tmp_path / 'rank{rank}.stderr'),
    ]
    proc = start_scenario('TRAINER_KWARGS = {}\n' + LONG_FIT, launcher=launcher, script_args=[str(tmp_path)])
    _wait_for(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    logs = '\n'.join(f'{p.name}:\n{p.read_text()}' for p in sorted(tmp_path.glob('rank*.std*')))
    assert _markers(tmp_path) == ['close.rank0', 'close.rank1', 'post_close.rank0', 'post_close.rank1'], logs + err
    assert proc.returncode == 143, logs + err
    # The launcher waits up to 30 s before SIGKILL; ranks that close by themselves finish long before that.
    assert elapsed < 20, (elapsed, logs + err)
