# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Runs one suite on both sides, chunk by chunk, and collects the outcomes."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from clients.suites.outcomes import Outcome, SuiteError, read_reportlog

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / 'build' / 'client-tests'
#: Seconds a short helper command (git, pip check, an import check) may take.
SHORT_TIMEOUT = 300
#: Seconds a pip install of the test dependencies may take.
INSTALL_TIMEOUT = 1800
#: Seconds between two looks at a running pytest (its end, its report log's end, the chunk timeout).
POLL_SECONDS = 1.0
#: The environment variables that change the fork's behaviour; the suites run with the defaults on both sides.
FORK_ENV = ('COMPOSER_SAVE_ON_PREEMPTION', 'COMPOSER_SIGNAL_CLOSE_TIMEOUT', 'COMPOSER_SIGNAL_HANDLING')


def log(message: str) -> None:
    print(
        f'[client-tests {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {message}',
        file=sys.stderr,
        flush=True,
    )


def run(cmd: list[str], what: str, timeout: float = SHORT_TIMEOUT, **kwargs: Any) -> str:
    """Runs a short command; returns its stdout, or raises SuiteError saying what failed."""
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise SuiteError(f'{what}: no result within {timeout:.0f} s ({" ".join(cmd)})') from e
    except OSError as e:
        raise SuiteError(f'{what}: cannot run {cmd[0]}: {e}') from e
    if proc.returncode != 0:
        tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SuiteError(f'{what} failed (exit {proc.returncode}): {" ".join(cmd)}\n{tail}')
    return proc.stdout


def git_describe(checkout: Path) -> tuple[str, str]:
    """The commit of a git checkout and its name: the tag at it, else its branch, else ``git describe --always``."""
    commit = run(['git', '-C', str(checkout), 'rev-parse', 'HEAD'], f'git rev-parse in {checkout}').strip()
    for cmd in (['describe', '--tags', '--exact-match'], ['symbolic-ref', '--short', '-q', 'HEAD']):
        try:
            name = run(['git', '-C', str(checkout), *cmd], f'git {cmd[0]} in {checkout}').strip()
        except SuiteError:
            continue
        if name:
            return commit, name
    return commit, run(
        ['git', '-C', str(checkout), 'describe', '--tags', '--always'],
        f'git describe in {checkout}',
    ).strip()


def fork_state(installed: Optional[Path] = None) -> dict[str, str]:
    """This repository's commit, whether the working tree's fork sources differ from it, and whether the installed
    fork's own module (``installed``: the fork side's composer package folder) is that commit's."""
    commit = run(['git', '-C', str(REPO), 'rev-parse', 'HEAD'], 'git rev-parse').strip()
    dirty = run([
        'git',
        '-C',
        str(REPO),
        'status',
        '--porcelain',
        '--',
        'composer',
        'patches',
        'setup.py',
        'upstream.cfg',
    ], 'git status').strip()
    state = {'commit': commit, 'sources_modified_since_commit': 'yes' if dirty else 'no'}
    module = 'composer/utils/signal_handling.py'
    if installed is not None and (installed / 'utils' / 'signal_handling.py').exists():
        committed = run(['git', '-C', str(REPO), 'show', f'HEAD:{module}'], f'git show HEAD:{module}')
        same = (installed / 'utils' / 'signal_handling.py').read_text() == committed
        state['installed_signal_handling_is_commits'] = 'yes' if same else 'no'
    return state


@dataclasses.dataclass
class Side:
    """One of the two runs: the installed fork, or upstream's package first on PYTHONPATH."""

    name: str
    #: Put before the run folder on PYTHONPATH (the run folder is always on it, for the tests' subprocesses).
    pythonpath: list[Path]


@dataclasses.dataclass
class Suite:
    """A client's test suite, ready to run with ``python -m pytest`` in a fresh copy of ``template``.

    Each pytest run (one chunk, one side) gets its own copy of the template folder, named as the template (some
    suites check the name of their folder), under ``<out>/<suite>/<side>/``: what a run leaves behind in its folder
    (LLM Foundry's eval tests leave symlinks in scripts/) cannot change the next run's outcomes.
    """

    name: str
    title: str
    python: Path
    template: Path
    chunks: list[str]
    pytest_args: list[str]
    sides: list[Side]
    checkout: Path
    checkout_commit: str
    checkout_describe: str
    deselected: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: Environment variables of both sides; ``{run}`` in a value stands for the run's folder.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Seconds per test (pytest-timeout), unless --test-timeout says otherwise.
    test_timeout: int = 300
    #: Modules whose file each side reports with composer's (e.g. that the client itself is the venv's).
    also_import: list[str] = dataclasses.field(default_factory=list)


def side_env(suite: Suite, side: Side, run_dir: Path) -> dict[str, str]:
    """The environment of one side: the venv's bin first on PATH (as if activated), PYTHONPATH as the side says."""
    env = {k: v for k, v in os.environ.items() if k not in FORK_ENV and k != 'PYTHONPATH'}
    env['PATH'] = os.pathsep.join([str(suite.python.parent), env.get('PATH', '')])
    env['VIRTUAL_ENV'] = str(suite.python.parent.parent)
    env['PYTHONPATH'] = os.pathsep.join(str(p) for p in [*side.pythonpath, run_dir])
    env.update({k: v.replace('{run}', str(run_dir)) for k, v in suite.env.items()})
    return env


def composer_of(suite: Suite, side: Side) -> dict[str, str]:
    """Which ``composer`` a side imports (version and file), and the files of ``suite.also_import``."""
    code = 'import composer; print(composer.__version__); print(composer.__file__)'
    for module in suite.also_import:
        code += f'; import {module}; print({module}.__file__)'
    out = run(
        [str(suite.python), '-c', code],
        f'importing composer on the {side.name} side',
        cwd=suite.template,
        env=side_env(suite, side, suite.template),
    )
    lines = out.strip().splitlines()[-2 - len(suite.also_import):]
    return {'version': lines[0], 'file': lines[1]} | dict(zip(suite.also_import, lines[2:]))


def _slug(chunk: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', chunk).strip('_') or 'all'


def _session_finished(reportlog: Path) -> bool:
    """Whether pytest wrote its SessionFinish record (the last line of the report log)."""
    try:
        with reportlog.open('rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            return b'"SessionFinish"' in f.read()
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Ends a pytest run and everything it started (its own session): SIGTERM, then SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclasses.dataclass
class ChunkRun:
    """One pytest run of one chunk on one side."""

    side: str
    chunk: str
    seconds: float
    #: Seconds from the end of pytest's session (its report log's SessionFinish) to the end of the process: the exit
    #: hooks (atexit, e.g. an engine closing at exit) and the interpreter's shutdown; None if the session did not end.
    exit_seconds: Optional[float]
    returncode: Optional[int]
    exitstatus: Optional[int]
    timed_out: bool
    log: str
    reportlog: str
    results: dict[str, Outcome]

    def summary(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data['results']
        data['tests'] = len(self.results)
        return data


def run_chunk(suite: Suite, side: Side, chunk: str, out: Path, test_timeout: int, chunk_timeout: int) -> ChunkRun:
    """Runs ``pytest <chunk>`` on one side with a per-test timeout, in its own session, killed after chunk_timeout."""
    side_dir = out / suite.name / side.name
    side_dir.mkdir(parents=True, exist_ok=True)
    reportlog = side_dir / f'{_slug(chunk)}.jsonl'
    log_file = side_dir / f'{_slug(chunk)}.log'
    reportlog.unlink(missing_ok=True)
    run_dir = side_dir / suite.template.name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(suite.template, run_dir, symlinks=True)
    basetemp = side_dir / 'tmp'  # pytest empties it at the start of each run
    cmd = ['nice', '-n', '10'] if shutil.which('nice') else []
    cmd += [str(suite.python), '-m', 'pytest', *chunk.split(), *suite.pytest_args]
    cmd += ['-p', 'no:cacheprovider', '--color=no', '-q', '-rfE', f'--timeout={test_timeout}']
    cmd += ['--continue-on-collection-errors', f'--basetemp={basetemp}', f'--report-log={reportlog}']
    for entry in suite.deselected:
        cmd += ['--deselect', entry['test']]
    shown = log_file.relative_to(REPO) if log_file.is_relative_to(REPO) else log_file
    log(f'{suite.name}: {side.name}: pytest {chunk} (log: {shown})')
    start = time.monotonic()
    timed_out = False
    with log_file.open('w') as f:
        f.write(' '.join(cmd) + '\n')
        f.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=run_dir,
            env=side_env(suite, side, run_dir),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        session_end = None
        try:
            while proc.poll() is None:
                if time.monotonic() - start > chunk_timeout:
                    timed_out = True
                    log(f'{suite.name}: {side.name}: {chunk} still running after {chunk_timeout} s: stopping it')
                    _stop(proc)
                    break
                if session_end is None and _session_finished(reportlog):
                    session_end = time.monotonic()
                time.sleep(POLL_SECONDS)
        except BaseException:
            _stop(proc)
            raise
    end = time.monotonic()
    seconds = end - start
    if session_end is None and _session_finished(reportlog):
        session_end = end
    exit_seconds = None if session_end is None else round(end - session_end, 1)
    results, exitstatus = read_reportlog(reportlog)
    if not reportlog.exists():
        raise SuiteError(f'{suite.name}: pytest wrote no report log on the {side.name} side; see {log_file}')
    shutil.rmtree(basetemp, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    after = '' if exit_seconds is None else f', {exit_seconds:.0f} s of them after the session\'s end'
    log(f'{suite.name}: {side.name}: {chunk}: {len(results)} tests in {seconds:.0f} s{after} (exit {proc.returncode})')
    return ChunkRun(
        side.name,
        chunk,
        seconds,
        exit_seconds,
        proc.returncode,
        exitstatus,
        timed_out,
        str(log_file),
        str(reportlog),
        results,
    )


def run_suite(suite: Suite, out: Path, test_timeout: int, chunk_timeout: int,
              deadline: Optional[datetime.datetime]) -> dict[str, Any]:
    """Runs every chunk on each side in turn (fork, then upstream), so what ran is always comparable.

    Args:
        suite: the suite.
        out: the output folder (build/client-tests).
        test_timeout: seconds per test (pytest-timeout).
        chunk_timeout: seconds per pytest run.
        deadline: no chunk starts after this time (UTC); the chunks not run are listed in the result.

    Returns:
        The runs' data: start and end time, which composer each side imported, every chunk run, the chunks skipped.
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    imported = {side.name: composer_of(suite, side) for side in suite.sides}
    for side in suite.sides:
        log(
            f'{suite.name}: {side.name} side imports composer {imported[side.name]["version"]} from '
            f'{imported[side.name]["file"]}',
        )
    if len({v['file'] for v in imported.values()}) != len(suite.sides):
        raise SuiteError(f'{suite.name}: both sides import the same composer ({imported}); check PYTHONPATH')
    runs: list[ChunkRun] = []
    not_run: list[str] = []
    for chunk in suite.chunks:
        if deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= deadline:
            not_run.append(chunk)
            continue
        for side in suite.sides:
            runs.append(run_chunk(suite, side, chunk, out, test_timeout, chunk_timeout))
    if not_run:
        log(f'{suite.name}: deadline reached; not run: {", ".join(not_run)}')
    return {
        'started': started,
        'finished': datetime.datetime.now(datetime.timezone.utc),
        'imported': imported,
        'runs': runs,
        'not_run': not_run,
    }
