# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Per-test outcomes from pytest-reportlog files, and their comparison between the fork and upstream."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Optional

#: The outcomes of one test, in the order the reports list them. ``not run``: the test has no complete report on that
#: side (its chunk was interrupted, or it was not collected there).
OUTCOMES = ('passed', 'failed', 'skipped', 'xfailed', 'xpassed', 'error', 'not run')
MESSAGE_CHARS = 240
HERE = Path(__file__).resolve().parent
DIFFERENCES_FILE = HERE / 'differences.toml'


class SuiteError(Exception):
    """A suite could not be set up or run; the message says what to do."""


@dataclasses.dataclass
class Outcome:
    """How one test ended on one side."""

    outcome: str
    message: str = ''
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _message(report: dict[str, Any]) -> str:
    """A one-line summary of a report's ``longrepr`` (the crash message, or the skip reason)."""
    longrepr = report.get('longrepr')
    text = ''
    if isinstance(longrepr, list) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        text = str(longrepr[2])
    elif isinstance(longrepr, dict):
        crash = longrepr.get('reprcrash') or {}
        text = crash.get('message') or ''
        if not text:
            entries = (longrepr.get('reprtraceback') or {}).get('reprentries') or []
            for entry in reversed(entries):
                lines = (entry.get('data') or {}).get('lines') or []
                errors = [line for line in lines if line.startswith('E ')]
                if errors:
                    text = errors[-1][1:].strip()
                    break
    elif isinstance(longrepr, str):
        lines = [line for line in longrepr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith('E ')]
        text = (errors or lines or [''])[-1].lstrip('E').strip()
    text = ' '.join(text.split())
    return text[:MESSAGE_CHARS] + ('...' if len(text) > MESSAGE_CHARS else '')


def read_reportlog(path: Path) -> tuple[dict[str, Outcome], Optional[int]]:
    """Reads a pytest-reportlog file.

    Args:
        path: the ``--report-log`` file of one pytest run (it may end early, if the run was killed).

    Returns:
        The outcome of every test (and of every collector that failed to collect, as ``error``), and the session's
        exit status (``None`` if the session did not finish).
    """
    phases: dict[str, dict[str, dict[str, Any]]] = {}
    results: dict[str, Outcome] = {}
    exitstatus = None
    if not path.exists():
        return results, exitstatus
    with path.open() as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            kind = record.get('$report_type')
            if kind == 'CollectReport' and record.get('outcome') == 'failed':
                results[record['nodeid']] = Outcome('error', 'collection: ' + _message(record))
            elif kind == 'TestReport':
                phases.setdefault(record['nodeid'], {})[record['when']] = record
            elif kind == 'SessionFinish':
                exitstatus = record.get('exitstatus')
    for nodeid, by_phase in phases.items():
        results[nodeid] = _outcome(by_phase)
    return results, exitstatus


def _outcome(by_phase: dict[str, dict[str, Any]]) -> Outcome:
    """One label per test from its setup, call and teardown reports (pytest counts a teardown error separately)."""
    setup, call, teardown = (by_phase.get(when) for when in ('setup', 'call', 'teardown'))
    duration = sum(float(r.get('duration') or 0.0) for r in by_phase.values())
    if setup is None:
        return Outcome('not run', 'no setup report', duration)
    if setup['outcome'] == 'failed':
        return Outcome('error', 'setup: ' + _message(setup), duration)
    if setup['outcome'] == 'skipped':
        result = Outcome('xfailed' if 'wasxfail' in setup else 'skipped', _message(setup), duration)
    elif call is None:
        return Outcome('not run', 'no call report (interrupted)', duration)
    elif call['outcome'] == 'failed':
        result = Outcome('failed', _message(call), duration)
    elif call['outcome'] == 'skipped':
        result = Outcome('xfailed' if 'wasxfail' in call else 'skipped', _message(call), duration)
    else:
        result = Outcome('xpassed' if 'wasxfail' in call else 'passed', '', duration)
    if teardown is not None and teardown['outcome'] == 'failed':
        return Outcome('error', f'teardown (after {result.outcome}): ' + _message(teardown), duration)
    return result


@dataclasses.dataclass
class Explanation:
    """An entry of differences.toml: why a test's outcome differs between the fork and upstream."""

    suite: str
    test: str  # an fnmatch pattern on the node id
    fork: str
    upstream: str
    reason: str

    def matches(self, suite: str, nodeid: str, fork: str, upstream: str) -> bool:
        return (
            self.suite == suite and fnmatch.fnmatchcase(nodeid, self.test) and self.fork in ('*', fork) and
            self.upstream in ('*', upstream)
        )


def load_explanations(path: Path = DIFFERENCES_FILE) -> list[Explanation]:
    """Reads the explained differences (``[[difference]]`` tables with suite, test, fork, upstream and reason)."""
    if not path.exists():
        return []
    data = tomllib.loads(path.read_text())
    explanations = []
    for i, entry in enumerate(data.get('difference', [])):
        missing = {'suite', 'test', 'fork', 'upstream', 'reason'} - entry.keys()
        if missing:
            raise SuiteError(f'{path}: difference #{i + 1} lacks {", ".join(sorted(missing))}')
        explanations.append(Explanation(**{k: str(entry[k]) for k in ('suite', 'test', 'fork', 'upstream', 'reason')}))
    return explanations


@dataclasses.dataclass
class Difference:
    """A test whose outcome is not the same on both sides."""

    nodeid: str
    fork: Outcome
    upstream: Outcome
    reason: Optional[str]  # None: unexplained


def compare(
    suite: str,
    fork: dict[str, Outcome],
    upstream: dict[str, Outcome],
    explanations: Iterable[Explanation],
) -> list[Difference]:
    """Every test whose outcome differs (a test missing on one side counts as ``not run`` there)."""
    explanations = list(explanations)
    differences = []
    for nodeid in sorted(fork.keys() | upstream.keys()):
        f = fork.get(nodeid) or Outcome('not run', 'not collected or not reached')
        u = upstream.get(nodeid) or Outcome('not run', 'not collected or not reached')
        if f.outcome == u.outcome:
            continue
        reason = next((e.reason for e in explanations if e.matches(suite, nodeid, f.outcome, u.outcome)), None)
        differences.append(Difference(nodeid, f, u, reason))
    return differences


def counts(results: dict[str, Outcome]) -> dict[str, int]:
    """How many tests ended with each outcome."""
    tally = dict.fromkeys(OUTCOMES, 0)
    for result in results.values():
        tally[result.outcome] += 1
    return tally
