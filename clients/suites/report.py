# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The JSON of all outcomes and the markdown table of one suite's comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clients.suites.outcomes import OUTCOMES, Outcome, compare, counts, load_explanations
from clients.suites.run import REPO, Suite, fork_state, run


def _rel(path: Path | str) -> str:
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def build(suite: Suite, ran: dict[str, Any], test_timeout: int) -> dict[str, Any]:
    """Everything one suite's comparison found, as JSON-ready data."""
    results: dict[str, dict[str, Outcome]] = {side.name: {} for side in suite.sides}
    seconds = {side.name: 0.0 for side in suite.sides}
    incomplete = []
    for chunk_run in ran['runs']:
        results[chunk_run.side].update(chunk_run.results)
        seconds[chunk_run.side] += chunk_run.seconds
        if chunk_run.timed_out or chunk_run.exitstatus is None:
            incomplete.append(f'{chunk_run.side}: {chunk_run.chunk}')
    fork, upstream = (results[side.name] for side in suite.sides)
    differences = compare(suite.name, fork, upstream, load_explanations())
    python_version, pytest_version = run(
        [str(suite.python), '-c', 'import platform, pytest; print(platform.python_version(), pytest.__version__)'],
        'reading the versions of python and pytest',
    ).split()
    return {
        'suite': suite.name,
        'title': suite.title,
        'started': ran['started'].isoformat(timespec='seconds'),
        'finished': ran['finished'].isoformat(timespec='seconds'),
        'fork': fork_state(Path(ran['imported'][suite.sides[0].name]['file']).parent),
        'imported': ran['imported'],
        'python': _rel(suite.python),
        'python_version': python_version,
        'pytest': f'pytest {pytest_version}',
        'checkout': _rel(suite.checkout),
        'checkout_commit': suite.checkout_commit,
        'checkout_describe': suite.checkout_describe,
        'chunks': suite.chunks,
        'chunks_not_run': ran['not_run'],
        'incomplete_runs': incomplete,
        'pytest_args': suite.pytest_args,
        'test_timeout': test_timeout,
        'env': suite.env,
        'notes': suite.notes,
        'deselected': suite.deselected,
        'seconds': seconds,
        'counts': {
            name: counts(side_results) for name, side_results in results.items()
        },
        'runs': [r.summary() | {
            'log': _rel(r.log),
            'reportlog': _rel(r.reportlog),
        } for r in ran['runs']],
        'differences': [{
            'test': d.nodeid,
            'fork': d.fork.as_dict(),
            'upstream': d.upstream.as_dict(),
            'reason': d.reason,
        } for d in differences],
        'outcomes': {
            nodeid: {
                name: results[name][nodeid].as_dict() for name in results if nodeid in results[name]
            } for nodeid in sorted(fork.keys() | upstream.keys())
        },
    }


def write_json(data: dict[str, Any], out: Path) -> Path:
    path = out / f'{data["suite"]}.json'
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + '\n')
    return path


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def _installed(fork: dict[str, str]) -> str:
    if 'installed_signal_handling_is_commits' not in fork:
        return ''
    return f'; the installed fork\'s composer/utils/signal_handling.py is that commit\'s: ' + fork[
        'installed_signal_handling_is_commits']


def _times(data: dict[str, Any], sides: list[str]) -> list[str]:
    """Wall time of each pytest run per side, with the part after the session's end (exit hooks, shutdown)."""
    by_chunk: dict[str, dict[str, dict[str, Any]]] = {}
    for r in data['runs']:
        by_chunk.setdefault(r['chunk'], {})[r['side']] = r
    lines = [
        '<details><summary>Wall time per pytest run (s; in brackets: after the session\'s end, i.e. exit hooks and '
        'interpreter shutdown)</summary>',
        '',
        '| path | tests | ' + ' | '.join(sides) + ' |',
        '| --- | ---: |' + ' ---: |' * len(sides),
    ]
    for chunk, runs in by_chunk.items():
        cells = []
        for side in sides:
            r = runs.get(side)
            if r is None:
                cells.append('not run')
                continue
            after = '?' if r.get('exit_seconds') is None else f'{r["exit_seconds"]:.0f}'
            cells.append(f'{r["seconds"]:.0f} ({after})' + (' timed out' if r['timed_out'] else ''))
        tests = max(r['tests'] for r in runs.values())
        lines.append(f'| `{chunk}` | {tests} | ' + ' | '.join(cells) + ' |')
    return lines + ['', '</details>', '']


def markdown(data: dict[str, Any]) -> str:
    """The suite's section: what ran where, the counts per side, every difference, the tests bad on both sides."""
    sides = list(data['counts'])
    shown = [name for name in OUTCOMES if any(data['counts'][side][name] for side in sides)]
    unexplained = [d for d in data['differences'] if d['reason'] is None]
    lines = [f'### {data["title"]}', '']
    fork_import = data['imported'][sides[0]]
    upstream_import = data['imported'][sides[1]]
    lines += [
        f'- Run: {data["started"]} to {data["finished"]} (UTC); wall time per side: ' +
        ', '.join(f'{side} {data["seconds"][side] / 60:.1f} min' for side in sides),
        f'- Fork: `{fork_import["version"]}` (installed in `{data["python"]}`), repository commit '
        f'`{data["fork"]["commit"][:12]}` (the working tree\'s fork sources differ from it when the report was '
        f'written: {data["fork"]["sources_modified_since_commit"]}{_installed(data["fork"])}); upstream: '
        f'`{upstream_import["version"]}` from `{_rel(upstream_import["file"])}`',
        f'- Tests: `{data["checkout"]}` at `{data["checkout_describe"]}` (`{data["checkout_commit"][:12]}`); '
        f'Python {data["python_version"]}, {data["pytest"]}; per-test timeout {data["test_timeout"]} s',
        '- Paths: ' + ' '.join(f'`{c}`' for c in data['chunks'] if c not in data['chunks_not_run']),
    ]
    for module in [k for k in fork_import if k not in ('version', 'file')]:
        fork_file, upstream_file = _rel(fork_import[module]), _rel(upstream_import.get(module, '?'))
        lines.append(
            f'- `{module}` imported from `{fork_file}` on both sides' if fork_file == upstream_file else
            f'- `{module}`: fork side `{fork_file}`, upstream side `{upstream_file}`',
        )
    if data['pytest_args']:
        lines.append('- pytest arguments: `' + ' '.join(data['pytest_args']) + '`')
    if data['chunks_not_run']:
        lines.append('- **Not run** (deadline): ' + ' '.join(f'`{c}`' for c in data['chunks_not_run']))
    if data['incomplete_runs']:
        lines.append(
            '- **Interrupted runs** (their remaining tests are `not run`): ' + ', '.join(data['incomplete_runs']),
        )
    lines += [f'- {note}' for note in data['notes']]
    lines += ['', '| side | ' + ' | '.join(shown) + ' | tests |', '| --- |' + ' ---: |' * (len(shown) + 1)]
    for side in sides:
        c = data['counts'][side]
        lines.append(f'| {side} | ' + ' | '.join(str(c[name]) for name in shown) + f' | {sum(c.values())} |')
    lines += ['', f'Outcomes that differ: {len(data["differences"])} ({len(unexplained)} unexplained).', '']
    lines += _times(data, sides)
    if data['differences']:
        lines += ['| test | fork | upstream | explanation |', '| --- | --- | --- | --- |']
        for d in data['differences']:
            f, u = d['fork'], d['upstream']
            fork_cell = f['outcome'] + (f': {f["message"]}' if f['message'] and f['outcome'] != 'skipped' else '')
            upstream_cell = u['outcome'] + (f': {u["message"]}' if u['message'] and u['outcome'] != 'skipped' else '')
            lines.append(
                f'| `{_cell(d["test"])}` | {_cell(fork_cell)} | {_cell(upstream_cell)} | '
                f'{_cell(d["reason"] or "**unexplained**")} |',
            )
        lines.append('')
    if data['deselected']:
        lines += ['Deselected (`--deselect`, on both sides):', '', '| test | reason |', '| --- | --- |']
        lines += [f'| `{_cell(e["test"])}` | {_cell(e["reason"])} |' for e in data['deselected']]
        lines.append('')
    bad = {}
    for nodeid, by_side in data['outcomes'].items():
        outcomes = {by_side.get(side, {}).get('outcome') for side in sides}
        if len(outcomes) == 1 and outcomes & {'failed', 'error'}:
            bad[nodeid] = by_side[sides[0]]
    if bad:
        lines += [
            f'<details><summary>{len(bad)} tests fail or error alike on both sides (the same outcome: fine for this '
            'comparison); the fork side\'s message</summary>',
            '',
            '| test | outcome | message |',
            '| --- | --- | --- |',
        ]
        lines += [f'| `{_cell(t)}` | {o["outcome"]} | {_cell(o["message"])} |' for t, o in bad.items()]
        lines += ['', '</details>', '']
    return '\n'.join(lines) + '\n'
