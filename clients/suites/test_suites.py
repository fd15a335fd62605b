# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Tests of the comparison (``python -m pytest clients/suites``): report logs, outcomes, differences, the table."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from clients.suites import report
from clients.suites.outcomes import Explanation, Outcome, compare, counts, read_reportlog
from clients.suites.run import ChunkRun, Side, Suite


def _report(nodeid: str, when: str, outcome: str, **extra) -> dict:
    return {'$report_type': 'TestReport', 'nodeid': nodeid, 'when': when, 'outcome': outcome, 'duration': 0.5} | extra


def _write(path: Path, records: list[dict], finished: bool = True) -> Path:
    lines = [json.dumps({'$report_type': 'SessionStart', 'pytest_version': '8'})]
    lines += [json.dumps(r) for r in records]
    if finished:
        lines.append(json.dumps({'$report_type': 'SessionFinish', 'exitstatus': 1}))
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_outcomes_from_phases(tmp_path: Path):
    crash = {'reprcrash': {'message': 'AssertionError: assert 1 == 2'}}
    records = [
        *(_report('t.py::ok', w, 'passed') for w in ('setup', 'call', 'teardown')),
        _report('t.py::bad', 'setup', 'passed'),
        _report('t.py::bad', 'call', 'failed', longrepr=crash),
        _report('t.py::bad', 'teardown', 'passed'),
        _report('t.py::skip', 'setup', 'skipped', longrepr=['t.py', 3, 'Skipped: no gpu']),
        _report('t.py::skip', 'teardown', 'passed'),
        _report('t.py::setup_error', 'setup', 'failed', longrepr=crash),
        _report('t.py::setup_error', 'teardown', 'passed'),
        _report('t.py::xfail', 'setup', 'passed'),
        _report('t.py::xfail', 'call', 'skipped', wasxfail='known'),
        _report('t.py::xfail', 'teardown', 'passed'),
        _report('t.py::teardown_error', 'setup', 'passed'),
        _report('t.py::teardown_error', 'call', 'passed'),
        _report('t.py::teardown_error', 'teardown', 'failed', longrepr=crash),
        _report('t.py::killed', 'setup', 'passed'),
        {
            '$report_type': 'CollectReport',
            'nodeid': 'broken.py',
            'outcome': 'failed',
            'longrepr': 'E   ImportError: x',
        },
    ]
    results, exitstatus = read_reportlog(_write(tmp_path / 'log.jsonl', records))
    assert exitstatus == 1
    assert {
        k: v.outcome for k, v in results.items()
    } == {
        't.py::ok': 'passed',
        't.py::bad': 'failed',
        't.py::skip': 'skipped',
        't.py::setup_error': 'error',
        't.py::xfail': 'xfailed',
        't.py::teardown_error': 'error',
        't.py::killed': 'not run',
        'broken.py': 'error',
    }
    assert results['t.py::bad'].message == 'AssertionError: assert 1 == 2'
    assert results['t.py::skip'].message == 'Skipped: no gpu'
    assert results['broken.py'].message == 'collection: ImportError: x'
    assert results['t.py::teardown_error'].message.startswith('teardown (after passed): ')


def test_interrupted_log(tmp_path: Path):
    path = _write(tmp_path / 'log.jsonl', [_report('t.py::a', 'setup', 'passed')], finished=False)
    path.write_text(path.read_text() + '{"$report_type": "TestRe')  # killed mid-line
    results, exitstatus = read_reportlog(path)
    assert exitstatus is None
    assert results['t.py::a'].outcome == 'not run'
    assert read_reportlog(tmp_path / 'missing.jsonl') == ({}, None)


def test_compare_and_explanations():
    fork = {'a': Outcome('passed'), 'b': Outcome('passed'), 'c': Outcome('failed'), 'only_fork': Outcome('passed')}
    upstream = {'a': Outcome('passed'), 'b': Outcome('failed'), 'c': Outcome('passed')}
    explanations = [Explanation('composer', 'b', 'passed', 'failed', 'fixed by the fork')]
    differences = compare('composer', fork, upstream, explanations)
    assert [(d.nodeid, d.fork.outcome, d.upstream.outcome, d.reason) for d in differences] == [
        ('b', 'passed', 'failed', 'fixed by the fork'),
        ('c', 'failed', 'passed', None),
        ('only_fork', 'passed', 'not run', None),
    ]
    # An explanation applies to its suite and outcomes only.
    assert compare('llmfoundry', fork, upstream, explanations)[0].reason is None
    assert counts(fork)['passed'] == 3


def test_markdown(tmp_path: Path):
    suite = Suite(
        name='composer',
        title='A suite',
        python=Path(sys.executable),
        template=tmp_path,
        chunks=['tests/x.py', 'tests/y.py'],
        pytest_args=[],
        sides=[Side('fork', []), Side('upstream', [tmp_path])],
        checkout=tmp_path,
        checkout_commit='0' * 40,
        checkout_describe='v0.32.1',
        deselected=[{
            'test': 'tests/x.py::net',
            'reason': 'needs the hub',
        }],
    )
    fork = {'tests/x.py::a': Outcome('passed'), 'tests/x.py::b': Outcome('failed', 'boom | bang')}
    upstream = {'tests/x.py::a': Outcome('error', 'setup: E'), 'tests/x.py::b': Outcome('failed', 'boom | bang')}
    now = datetime.datetime.now(datetime.timezone.utc)
    ran = {
        'started': now,
        'finished': now,
        'imported': {
            'fork': {
                'version': '0.32.1+signals.4',
                'file': '/venv/composer/__init__.py',
            },
            'upstream': {
                'version': '0.32.1',
                'file': '/up/composer/__init__.py',
            },
        },
        'runs': [
            ChunkRun('fork', 'tests/x.py', 10.0, 1.0, 1, 1, False, 'f.log', 'f.jsonl', fork),
            ChunkRun('upstream', 'tests/x.py', 12.0, None, None, None, True, 'u.log', 'u.jsonl', upstream),
        ],
        'not_run': ['tests/y.py'],
    }
    data = report.build(suite, ran, 300)
    assert data['incomplete_runs'] == ['upstream: tests/x.py']
    assert [d['test'] for d in data['differences']] == ['tests/x.py::a']
    md = report.markdown(json.loads(json.dumps(data)))
    assert '| fork | 1 | 1 | 0 | 2 |' in md  # passed, failed, error
    assert '| `tests/x.py::a` | passed | error: setup: E | **unexplained** |' in md
    assert '**Not run** (deadline): `tests/y.py`' in md
    assert '| `tests/x.py::net` | needs the hub |' in md
    assert '| `tests/x.py::b` | failed | boom \\| bang |' in md  # bad on both sides, listed
    assert '| `tests/x.py` | 2 | 10 (1) | 12 (?) timed out |' in md
