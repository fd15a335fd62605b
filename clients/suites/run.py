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
#: The environment variables that change the fork's behaviour; the suites run with the defaults on both sides.
FORK_ENV = ('COMPOSER_SAVE_ON_PREEMPTION', 'COMPOSER_SIGNAL_CLOSE_TIMEOUT', 'COMPOSER_SIGNAL_HANDLERS')


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
    """The commit of a git checkout and ``git describe --tags --always`` of it."""
    commit = run(['git', '-C', str(checkout), 'rev-parse', 'HEAD'], f'git rev-parse in {checkout}').strip()
    describe = run(['git', '-C', str(checkout), 'describe', '--tags', '--always'], f'git describe in {checkout}')
    return commit, describe.strip()


def fork_state() -> dict[str, str]:
    """This repository's commit, and whether the fork's sources differ from it in the working tree."""
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
    return {'commit': commit, 'sources_modified_since_commit': 'yes' if dirty else 'no'}


@dataclasses.dataclass
class Side:
    """One of the two runs: the installed fork, or upstream's package first on PYTHONPATH."""

    name: str
    pythonpath: list[Path]


@dataclasses.dataclass
class Suite:
    """A client's test suite, ready to run with ``python -m pytest`` in ``cwd``."""

    name: str
    title: str
    python: Path
    cwd: Path
    chunks: list[str]
    pytest_args: list[str]
    sides: list[Side]
    checkout: Path
    checkout_commit: str
    checkout_describe: str
    deselected: list[dict[str, str]] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def side_env(suite: Suite, side: Side) -> dict[str, str]:
    """The environment of one side: the venv's bin first on PATH (as if activated), PYTHONPATH as the side says."""
    env = {k: v for k, v in os.environ.items() if k not in FORK_ENV and k != 'PYTHONPATH'}
    env['PATH'] = os.pathsep.join([str(suite.python.parent), env.get('PATH', '')])
    env['VIRTUAL_ENV'] = str(suite.python.parent.parent)
    if side.pythonpath:
        env['PYTHONPATH'] = os.pathsep.join(str(p) for p in side.pythonpath)
    env.update(suite.env)
    return env


def composer_of(suite: Suite, side: Side) -> dict[str, str]:
    """Which ``composer`` a side imports (version and file), checked before its runs."""
    out = run(
        [str(suite.python), '-c', 'import composer, sys; print(composer.__version__); print(composer.__file__)'],
        f'importing composer on the {side.name} side',
        cwd=suite.cwd,
        env=side_env(suite, side),
    )
    version, path = out.strip().splitlines()[-2:]
    return {'version': version, 'file': path}


def _slug(chunk: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', chunk).strip('_') or 'all'


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
    basetemp = out / suite.name / 'tmp' / side.name  # pytest empties it at the start of each run
    basetemp.parent.mkdir(parents=True, exist_ok=True)
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
            cwd=suite.cwd,
            env=side_env(suite, side),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=chunk_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f'{suite.name}: {side.name}: {chunk} still running after {chunk_timeout} s: stopping it')
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
    seconds = time.monotonic() - start
    results, exitstatus = read_reportlog(reportlog)
    if not reportlog.exists():
        raise SuiteError(f'{suite.name}: pytest wrote no report log on the {side.name} side; see {log_file}')
    shutil.rmtree(basetemp, ignore_errors=True)
    log(f'{suite.name}: {side.name}: {chunk}: {len(results)} tests in {seconds:.0f} s (exit {proc.returncode})')
    return ChunkRun(
        side.name,
        chunk,
        seconds,
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
