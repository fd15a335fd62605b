# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Fixtures for the signal-handling regression tests.

Every test runs its scenario in a fresh Python subprocess with a timeout: signal dispositions are process-wide, so
they must not leak into (or from) the test runner, and nothing may hang.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest

#: Prepended to every scenario: a tiny CPU trainer factory and a helper to print results for the test to parse.
PRELUDE = textwrap.dedent(
    """
    import json
    import logging
    import os
    import signal
    import sys
    import threading

    def make_trainer(**kwargs):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from composer import Trainer
        from composer.models import ComposerClassifier

        torch.manual_seed(0)
        model = ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2)
        dataset = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        kwargs.setdefault('max_duration', '1ep')
        sampler = None
        if int(os.environ.get('WORLD_SIZE', '1')) > 1:  # under the `composer` launcher
            from composer.utils import dist
            sampler = dist.get_sampler(dataset)
        return Trainer(
            model=model,
            train_dataloader=DataLoader(dataset, batch_size=4, sampler=sampler),
            optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
            device='cpu',
            progress_bar=False,
            **kwargs,
        )

    def handlers():
        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def report(**values):
        print('RESULT ' + json.dumps(values), flush=True)

    def run_in_thread(target):
        # Run `target` on a new thread; return the exceptions it raised, as reprs.
        errors = []

        def wrapper():
            try:
                target()
            except BaseException as e:
                errors.append(repr(e))

        thread = threading.Thread(target=wrapper)
        thread.start()
        thread.join(120)
        return errors

    # Composer's warnings about its signal handlers, as logged in this process.
    warnings_seen = []

    class _CollectSignalWarnings(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING and 'SIGTERM' in record.getMessage():
                warnings_seen.append(record.getMessage())

    logging.getLogger().addHandler(_CollectSignalWarnings())
    """,
)


class Scenario:
    """The outcome of a scenario subprocess."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def results(self) -> dict:
        values: dict = {}
        for line in self.stdout.splitlines():
            if line.startswith('RESULT '):
                values.update(json.loads(line[len('RESULT '):]))
        return values

    def __repr__(self) -> str:
        return f'returncode={self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}'


def _write_script(path: Path, code: str) -> Path:
    path.write_text(PRELUDE + textwrap.dedent(code))
    return path


def _env(extra: Optional[dict[str, str]]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop('COMPOSER_SIGNAL_HANDLING', None)
    env.setdefault('PYTHONUNBUFFERED', '1')
    env.update(extra or {})
    return env


def _sigint_at_its_default() -> None:
    """Start a scenario like a program started from a terminal: SIGINT at its default (KeyboardInterrupt).

    A shell starts background jobs (and a CI runner may start the tests) with SIGINT ignored, and a child keeps a
    disposition that was ignored when it was executed.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_scenario_in(
    directory: Path,
    code: str,
    env: Optional[dict[str, str]] = None,
    timeout: float = 180,
) -> Scenario:
    script = _write_script(directory / 'scenario.py', code)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=_env(env),
            cwd=directory,
            preexec_fn=_sigint_at_its_default,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'scenario timed out after {timeout} s\nstdout: {e.stdout}\nstderr: {e.stderr}')
    return Scenario(proc)


@pytest.fixture
def run_scenario(tmp_path) -> Callable[..., Scenario]:
    """Run ``code`` (after :data:`PRELUDE`) in a fresh interpreter; fail the test if it exceeds ``timeout`` s."""

    def run(code: str, env: Optional[dict[str, str]] = None, timeout: float = 180) -> Scenario:
        return _run_scenario_in(tmp_path, code, env=env, timeout=timeout)

    return run


@pytest.fixture(scope='module')
def run_scenario_in() -> Callable[..., Scenario]:
    """``run_scenario_in(directory, code, env=None, timeout=180)``: :func:`run_scenario` in a given directory.

    Module-scoped, for fixtures shared by several tests (e.g. an uninterrupted reference run).
    """
    return _run_scenario_in


@pytest.fixture
def start_scenario(tmp_path):
    """Start ``code`` (after :data:`PRELUDE`) for tests that signal it; its process tree is killed at teardown.

    ``launcher`` prefixes the command (e.g. the ``composer`` launcher and its options) instead of ``python``;
    ``script_args`` follow the script.
    """
    procs: list[subprocess.Popen] = []

    def start(
        code: str,
        env: Optional[dict[str, str]] = None,
        launcher: Optional[list[str]] = None,
        script_args: Sequence[str] = (),
    ) -> subprocess.Popen:
        script = _write_script(tmp_path / f'scenario_{len(procs)}.py', code)
        proc = subprocess.Popen(
            [*(launcher or [sys.executable]), str(script), *script_args],
            env=_env(env),
            cwd=tmp_path,
            preexec_fn=_sigint_at_its_default,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        _kill_tree(proc)


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its children (the launcher's ranks), if still running."""
    import psutil
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=30)


def _wait_for_files(pattern: str, count: int, proc: subprocess.Popen, timeout: float = 120.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(glob.glob(pattern))
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f'process exited early with {proc.returncode}\nstdout: {out}\nstderr: {err}')
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f'timed out waiting for {pattern}\nstdout: {out}\nstderr: {err}')


@pytest.fixture
def wait_for_files() -> Callable[..., list[str]]:
    """``wait_for_files(pattern, count, proc, timeout=120)``: wait until ``count`` files match ``pattern``.

    Fails the test if ``proc`` exits first or time runs out.
    """
    return _wait_for_files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def composer_launcher(tmp_path) -> Callable[..., list[str]]:
    """``composer_launcher(nproc=2)``: the ``composer`` launcher with CPU ranks, each rank's output in ``tmp_path``."""

    def command(nproc: int = 2) -> list[str]:
        return [
            os.path.join(os.path.dirname(sys.executable), 'composer'),
            '-n',
            str(nproc),
            '--master_addr',
            '127.0.0.1',
            '--master_port',
            str(_free_port()),
            '--stdout',
            str(tmp_path / 'rank{rank}.stdout'),
            '--stderr',
            str(tmp_path / 'rank{rank}.stderr'),
        ]

    return command


@pytest.fixture
def torchrun() -> Callable[..., list[str]]:
    """``torchrun(nproc=2)``: ``torchrun`` with CPU ranks on localhost."""

    def command(nproc: int = 2) -> list[str]:
        return [
            os.path.join(os.path.dirname(sys.executable), 'torchrun'),
            f'--nproc_per_node={nproc}',
            '--master_addr=127.0.0.1',
            f'--master_port={_free_port()}',
        ]

    return command


@pytest.fixture
def rank_logs(tmp_path) -> Callable[[], str]:
    """``rank_logs()``: the ranks' output files written by :func:`composer_launcher`, for failure messages."""

    def read() -> str:
        return '\n'.join(f'{p.name}:\n{p.read_text()}' for p in sorted(tmp_path.glob('rank*.std*')))

    return read
