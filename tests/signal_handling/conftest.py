# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Fixtures for the signal-handling regression tests.

Every test runs its scenario in a fresh Python subprocess with a timeout: signal dispositions are process-wide, so
they must not leak into (or from) the test runner, and nothing may hang.
"""

import functools
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

#: The scenario modules (see scenarios/scenario_support.py): each test runs one of their functions in a subprocess.
SCENARIOS = Path(__file__).resolve().parent / 'scenarios'


def results_of(stdout: str) -> dict:
    """What a scenario printed with ``report(...)``: its ``RESULT`` lines merged."""
    values: dict = {}
    for line in stdout.splitlines():
        if line.startswith('RESULT '):
            values.update(json.loads(line[len('RESULT '):]))
    return values


@pytest.fixture
def scenario_results() -> Callable[[str], dict]:
    """``scenario_results(stdout)``: what a started scenario printed with ``report(...)``."""
    return results_of


class Scenario:
    """The outcome of a scenario subprocess."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def results(self) -> dict:
        return results_of(self.stdout)

    def __repr__(self) -> str:
        return f'returncode={self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}'


def _scenario_command(module: str, name: str, args: Optional[dict]) -> list[str]:
    """``module``'s scenario ``name`` with keyword arguments ``args``: the arguments after ``python``."""
    return [str(SCENARIOS / module), name, json.dumps(args or {})]


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
    module: str,
    name: str,
    args: Optional[dict] = None,
    env: Optional[dict[str, str]] = None,
    timeout: float = 180,
) -> Scenario:
    try:
        proc = subprocess.run(
            [sys.executable, *_scenario_command(module, name, args)],
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
    """``run_scenario(module, name, args=None, env=None, timeout=180)``: run a scenario in a fresh interpreter.

    The scenario is the function ``name`` of ``scenarios/<module>``, called with the keyword arguments ``args``, in
    ``tmp_path``; the test fails if it exceeds ``timeout`` s.
    """
    return functools.partial(_run_scenario_in, tmp_path)


@pytest.fixture(scope='module')
def run_scenario_in() -> Callable[..., Scenario]:
    """``run_scenario_in(directory, module, name, args=None, env=None, timeout=180)``: ``run_scenario`` in a directory.

    Module-scoped, for fixtures shared by several tests (e.g. an uninterrupted reference run).
    """
    return _run_scenario_in


@pytest.fixture
def start_scenario(tmp_path):
    """``start_scenario(module, name, args=None, env=None, launcher=None, stdin=None)``: start a scenario to signal.

    As ``run_scenario``, without waiting; its process tree is killed at teardown. ``launcher`` prefixes the command
    (e.g. the ``composer`` launcher and its options) instead of ``python``; ``stdin`` is Popen's (e.g. a pipe).
    """
    procs: list[subprocess.Popen] = []

    def start(
        module: str,
        name: str,
        args: Optional[dict] = None,
        env: Optional[dict[str, str]] = None,
        launcher: Optional[list[str]] = None,
        stdin: Optional[int] = None,
    ) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*(launcher or [sys.executable]), *_scenario_command(module, name, args)],
            env=_env(env),
            cwd=tmp_path,
            preexec_fn=_sigint_at_its_default,
            stdin=stdin,
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
        # A marker file exists before its line is written (``mark`` opens, then writes): count it once it has one.
        found = sorted(path for path in glob.glob(pattern) if os.path.getsize(path) > 0)
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
    """``wait_for_files(pattern, count, proc, timeout=120)``: wait until ``count`` non-empty files match ``pattern``.

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


def _marks(directory: Path, name: str) -> dict[str, list[str]]:
    return {p.name.rsplit('.', 1)[1]: p.read_text().split('\n')[:-1] for p in sorted(directory.glob(f'{name}.rank*'))}


@pytest.fixture
def marks() -> Callable[[Path, str], dict[str, list[str]]]:
    """``marks(directory, name)``: the values a scenario's ``mark(name, ...)`` recorded in ``directory``, per rank."""
    return _marks


def _checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def checkpoints() -> Callable[[Path], list[str]]:
    """``checkpoints(folder)``: the names of the files in ``folder`` (none if it does not exist), sorted."""
    return _checkpoints


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except Exception:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f'did not exit within {timeout} s\nstdout: {out}\nstderr: {err}')


@pytest.fixture
def finish() -> Callable[..., tuple[str, str]]:
    """``finish(proc, timeout=120)``: ``proc``'s stdout and stderr once it exits; fails the test after ``timeout`` s."""
    return _finish


@pytest.fixture
def sigterm_to_a_forked_child(start_scenario, wait_for_files, tmp_path) -> Callable[..., tuple[subprocess.Popen, str]]:
    """``sigterm_to_a_forked_child(name, args, pid_marker)``: a ``fork_scenarios`` scenario, its child signalled.

    Starts ``fork_scenarios.<name>(**args)``, waits for the child's pid in ``tmp_path / pid_marker``, sends the child
    ``SIGTERM`` and waits for the parent to exit. Returns the parent process and its stderr.
    """

    def run(name: str, args: dict, pid_marker: str) -> tuple[subprocess.Popen, str]:
        proc = start_scenario('fork_scenarios.py', name, args)
        wait_for_files(str(tmp_path / pid_marker), 1, proc)
        child_pid = int((tmp_path / pid_marker).read_text())
        assert child_pid != proc.pid
        os.kill(child_pid, signal.SIGTERM)
        _, err = _finish(proc)
        return proc, err

    return run


@pytest.fixture
def second_signal_during_a_blocking_close(start_scenario, wait_for_files, tmp_path) -> Callable[..., str]:
    """``second_signal_during_a_blocking_close(second, blocked_in, trainer_kwargs=None)``: a force quit, checked.

    SIGTERM at batch 3 of ``close_scenarios.blocking_close_after_a_signal``, then ``second`` once its close blocks
    (``blocked_in``): the process must end with 128 + ``second`` promptly, without ``post_close``. Returns its stderr.
    """

    def run(second: int, blocked_in: str, trainer_kwargs: Optional[dict] = None) -> str:
        proc = start_scenario(
            'close_scenarios.py',
            'blocking_close_after_a_signal',
            {
                'blocks': blocked_in,
                'trainer_kwargs': trainer_kwargs or {},
            },
        )
        wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
        first_sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)  # the engine is closing, its close() blocks for minutes
        time.sleep(max(0.0, first_sent + 0.5 - time.monotonic()))  # a later signal, not the first delivered twice
        second_sent = time.monotonic()
        proc.send_signal(second)
        _, err = _finish(proc, timeout=60)
        elapsed = time.monotonic() - second_sent
        assert proc.returncode == 128 + second, err
        assert f'received {signal.Signals(second).name} again while stopping' in err
        assert elapsed < 30, elapsed  # not the 300 s that close() would have taken
        assert 'post_close.rank0' not in os.listdir(tmp_path)
        return err

    return run
