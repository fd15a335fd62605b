# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGKILL at any moment of a save never leaves autoresume without a complete checkpoint.

Preemption ends with SIGKILL when the grace period runs out. A run that saves a large checkpoint every batch (most of
its time is spent writing; ``save_every_batch.py``) is killed at random moments and restarted with ``autoresume`` each
time: once a first checkpoint is complete, ``latest-rank0.pt`` must always exist and load.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCENARIO = Path(__file__).resolve().parent / 'save_every_batch.py'
KILLS = 8


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f'process exited early with {proc.returncode}\nstdout: {out}\nstderr: {err}')
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f'timed out waiting for {path}\nstdout: {out}\nstderr: {err}')
        time.sleep(0.05)


@pytest.fixture
def start_run(tmp_path):
    """``start_run()``: start ``save_every_batch.py`` in ``tmp_path``; a run still alive at teardown is killed."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(SCENARIO)],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONUNBUFFERED='1'),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_sigkill_at_random_moments_of_saves_never_breaks_the_latest_checkpoint(start_run, tmp_path):
    rng = random.Random(int(os.environ.get('COMPOSER_TEST_SEED', '1234')))
    latest = tmp_path / 'checkpoints' / 'latest-rank0.pt'
    resumed_from = []
    for kill in range(KILLS):
        if (tmp_path / 'saved').exists():
            os.remove(tmp_path / 'saved')
        proc = start_run()
        _wait_for_file(tmp_path / 'saved', proc, timeout=180)
        resumed_from.append(int((tmp_path / 'saved').read_text()))
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the middle of one of the following saves
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        # A first checkpoint was complete before the kill: the symlink exists and its checkpoint loads.
        assert latest.is_symlink() and latest.exists(), f'kill {kill}: {sorted(os.listdir(latest.parent))}'
        try:
            state = torch.load(latest, map_location='cpu', weights_only=False)
        except Exception as e:  # a truncated file: the bug this test guards against
            pytest.fail(f'kill {kill}: {latest} does not load: {type(e).__name__}: {e}')
        assert state['state']['timestamp']['Timestamp']['batch'] >= resumed_from[-1]
    # Every restart continued from the checkpoint of the run before it, never from scratch.
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] > resumed_from[0], resumed_from
