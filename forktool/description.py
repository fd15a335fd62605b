"""The pull-request description of a topic's branch: the template ``patches/pr/<topic>.md`` with its blanks filled.

A template is Markdown in the sections of upstream's ``.github/PULL_REQUEST_TEMPLATE.md``; ``{{ name }}`` marks a part
made here (:data:`PLACEHOLDERS`). Upstream has no CI any more (mosaicml/composer#3934), so they are this run's
evidence: ``base`` (what the branch stacks on), ``commits`` (``base..branch``), ``tests`` (the topic's tests and
upstream's tests of the modules it changes, on the branch and on its base), ``lint`` (upstream's pre-commit hooks,
:mod:`forktool.lint`), ``tests_box`` and ``lint_box`` (``x`` when those passed), ``benchmarks`` (the committed table).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from forktool import ForkError, lint
from forktool.series import _git
from forktool.upstream import ROOT

REQUIRED = ('base', 'commits', 'tests', 'tests_box', 'lint', 'lint_box')
PLACEHOLDERS = (*REQUIRED, 'benchmarks')  # a template may leave the benchmarks out
TEMPLATES_DIR = 'pr'
#: Upstream's tests of the upstream modules the patches change (run on the branch and its base; bounded in time).
UPSTREAM_TESTS = {
    'composer/core/engine.py': ['tests/test_engine.py'],
    'composer/cli/launcher.py': ['tests/test_cli.py'],
    'composer/trainer/trainer.py': ['tests/trainer/test_trainer.py::TestTrainerInit',
                                    'tests/trainer/test_trainer.py::TestTrainerEvents'],
    'composer/callbacks/checkpoint_saver.py': ['tests/callbacks/test_checkpoint_saver.py'],
    'composer/utils/checkpoint.py': ['tests/trainer/test_checkpoint.py::TestCheckpointSaving',
                                     'tests/trainer/test_checkpoint.py::test_rotate_checkpoints'],
}  # yapf: disable
RUN_TIMEOUT = float(os.environ.get('FORK_PR_TEST_TIMEOUT', '1800'))  # seconds per pytest run
_PLACEHOLDER = re.compile(r'\{\{\s*(\w+)\s*\}\}')
_NOT_COLLECTED = (
    '**Evidence was not collected in this run** (`make pr ... EVIDENCE=0`): no test counts or hook results '
    'are claimed. `make pr UPSTREAM=<checkout> TOPIC={}` collects them.'
)


def check_templates(patches_dir: Path) -> list[str]:
    """Every topic of ``patches_dir/topics`` has a template, and every template fills only :data:`PLACEHOLDERS`."""
    topics_file = patches_dir / 'topics'
    text = topics_file.read_text(encoding='utf-8') if topics_file.is_file() else ''
    names = re.findall(r'(?m)^\s*\[(.+?)\]\s*$', text)
    directory = patches_dir / TEMPLATES_DIR
    problems = [f'{TEMPLATES_DIR}/{n}.md: missing (topic {n})' for n in names if not (directory / f'{n}.md').is_file()]
    for path in sorted(directory.glob('*.md')):
        used, where = _PLACEHOLDER.findall(path.read_text(encoding='utf-8')), f'{TEMPLATES_DIR}/{path.name}'
        problems += [f'{where}: no topic {path.stem} in patches/topics'] if path.stem not in names else []
        problems += [f'{where}: unknown placeholder {{{{ {n} }}}}' for n in sorted(set(used) - set(PLACEHOLDERS))]
        problems += [f'{where}: lacks {{{{ {n} }}}}' for n in REQUIRED if n not in used]
    return problems


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{ name }}`` replaced by ``values[name]``; a name without a value is an error."""
    missing = sorted({n for n in _PLACEHOLDER.findall(template) if n not in values})
    if missing:
        raise ForkError(f'no value for the placeholder(s) {", ".join(missing)} (known: {", ".join(PLACEHOLDERS)})')
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)].strip('\n'), template)


def commit_list(repo: Path, base: str, branch: str) -> str:
    """The commits ``base..branch`` as a Markdown list, oldest first: abbreviated hash and subject."""
    return _git(['log', '--reverse', '--format=- `%h` %s', f'{base}..{branch}'], cwd=repo).stdout.strip()


def parse_junit(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Counts by outcome (passed, failure, error, skipped) of a pytest ``--junitxml`` report; each failure's message."""
    counts, failed = dict.fromkeys(('passed', 'failure', 'error', 'skipped'), 0), {}
    for case in ET.parse(path).getroot().iter('testcase'):
        found = [(tag, e) for tag in ('failure', 'error', 'skipped') if (e := case.find(tag)) is not None]
        outcome, problem = found[0] if found else ('passed', None)
        counts[outcome] += 1
        if problem is not None and outcome != 'skipped':
            message = (problem.get('message') or '').strip().split('\n')[0][:160]
            failed[f'{case.get("classname", "")}::{case.get("name", "")}'.lstrip(':')] = message.replace('`', "'")
    return counts, failed


def run_pytest(checkout: Path, targets: list[str], timeout: float = RUN_TIMEOUT) -> tuple[str, dict[str, str], bool]:
    """Run pytest on ``targets`` in ``checkout`` (upstream's configuration): table cells, failures, whether it ran."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / 'junit.xml'
        command = [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q', '--continue-on-collection-errors']
        command += [f'--junitxml={report}', *targets]
        # As in an activated venv: upstream's tests run `python` and `composer` from PATH.
        path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get('PATH', '')
        env = {**os.environ, 'PYTHONPATH': str(checkout), 'PATH': path}
        started = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f'stopped after {timeout:.0f} s (timeout) | | | | ', {}, False
        if not report.is_file():
            return f'pytest exited with {proc.returncode} and wrote no report | | | | ', {}, False
        counts, failed = parse_junit(report)
    return ' | '.join(map(str, counts.values())) + f' | {time.monotonic() - started:.0f} s', failed, True


@contextlib.contextmanager
def _worktree(repo: Path, rev: str, path: Path) -> Iterator[Path]:
    """A detached worktree of ``repo`` at ``rev`` in ``path``, removed (and pruned) on exit."""
    _git(['worktree', 'add', '-q', '--detach', str(path), rev], cwd=repo)
    try:
        yield path
    finally:
        _git(['worktree', 'remove', '--force', str(path)], cwd=repo, check=False)
        _git(['worktree', 'prune'], cwd=repo, check=False)


def tests_evidence(branch, on_branch: Path, on_base: Path) -> tuple[str, bool]:
    """Run the topic's tests and upstream's tests of the changed modules in both worktrees: Markdown, and all good?"""
    topic = branch.topic
    changed = [f for p in (*topic.patches, *topic.upstream_only) for f in p.files()]
    own = list(dict.fromkeys(f for f in (*topic.own_files, *changed) if f.startswith('tests/')))
    own = [f for f in own if (on_branch / f).is_file()]
    for rel in own:  # the topic's test files (and conftest) on the base too: their failures there are the bug fixed
        (on_base / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(on_branch / rel, on_base / rel)
    own_tests = [f for f in own if re.fullmatch(r'test_.*\.py', Path(f).name)]
    upstream_tests = [t for f in changed for t in UPSTREAM_TESTS.get(f, []) if (on_branch / t.split('::')[0]).is_file()]
    rows = ['| tests | run on | passed | failed | errors | skipped | time |', '|---|---|---|---|---|---|---|']
    notes, ok, base = [], True, branch.base_commit[:9]
    for label, targets in (('this PR\'s tests', own_tests),
                           ('upstream\'s tests of the changed modules', upstream_tests)):
        if targets:
            row, failed, ran = run_pytest(on_branch, targets)
            base_row, base_failed, _ = run_pytest(on_base, targets)
            rows += [f'| {label} | `{branch.branch}` | {row} |', f'| {label} | base `{base}` | {base_row} |']
            new = failed if targets is own_tests else {n: m for n, m in failed.items() if n not in base_failed}
            ok = ok and ran and not new  # the base may fail as it likes
            notes += [f'- {label}: `pytest {" ".join(targets)}`']
            notes += [f'  - fails on the branch: `{n}` {m}' for n, m in new.items()]
    if len(rows) == 2:
        return 'This topic has no tests of its own and changes no module that upstream\'s tests map to.', False
    now = time.strftime('%Y-%m-%d %H:%M', time.gmtime())
    intro = f'Run on {now} UTC with Python {sys.version.split()[0]} and upstream\'s pytest configuration:'
    return '\n'.join([intro, '', *rows, '', *notes]), ok


def lint_evidence(branch, on_branch: Path) -> tuple[str, bool]:
    """Upstream's pre-commit hooks (pre-commit itself, through :mod:`forktool.lint`'s generated local hooks) on ``base..branch``: Markdown, passed?"""
    try:
        problems = lint.lint_upstream(on_branch, branch.base_commit, sys.executable, lint.DEFAULT_VENV)
    except ForkError as e:
        return f'**The hooks could not run:** {e}', False
    if not problems:
        return 'All hooks passed.', True
    return '\n'.join(['Findings:', '', '```', *problems, '```']), False


def benchmarks(root: Path = ROOT) -> str:
    """The committed benchmark table, or a sentence saying that there is none."""
    table = root / 'bench' / 'results' / 'latest.md'
    if not table.is_file():
        return '(No table is committed: `bench/results/latest.md`.)'
    return table.read_text(encoding='utf-8')


def base_text(branch, upstream: Path) -> str:
    """What the branch starts from: upstream, or the previous pull request of the series (to be merged first)."""
    head = _git(['log', '-1', '--format=%h (%cs, %s)', branch.upstream_commit], cwd=upstream).stdout.strip()
    if branch.base_commit == branch.upstream_commit:
        return f'This branch (`{branch.branch}`) starts from upstream `{head}`.'
    return (
        f'This branch (`{branch.branch}`) stacks on `{branch.base}`, the previous pull request of this series '
        f'(from upstream `{head}`): merge that one first. This PR\'s own commits are `{branch.base}..{branch.branch}`.'
    )


def write_description(branch, upstream: Path, out_dir: Path, evidence: bool = True, root: Path = ROOT) -> Path:
    """Fill ``root/patches/pr/<topic>.md`` for ``branch`` (a ``pr.TopicBranch`` in ``upstream``) into ``out_dir``.

    Without ``evidence`` no test or hook is run, and the description says so. Returns the file written.
    """
    name = branch.topic.name
    template = root / 'patches' / TEMPLATES_DIR / f'{name}.md'
    if not template.is_file():
        raise ForkError(f'{template} is missing: every topic needs its description template.')
    values = {
        'base': base_text(branch, upstream),
        'commits': commit_list(upstream, branch.base_commit, branch.branch),
        'benchmarks': benchmarks(root),
        'tests': _NOT_COLLECTED.format(name),
        'lint': 'Not run in this run (`EVIDENCE=0`).',
    }
    tests_ok = lint_ok = False
    if evidence:
        with tempfile.TemporaryDirectory() as tmp, \
                _worktree(upstream, branch.branch, Path(tmp) / 'branch') as on_branch, \
                _worktree(upstream, branch.base_commit, Path(tmp) / 'base') as on_base:
            values['lint'], lint_ok = lint_evidence(branch, on_branch)  # first: the tests leave files behind
            values['tests'], tests_ok = tests_evidence(branch, on_branch, on_base)
    values.update(tests_box='x' if tests_ok else ' ', lint_box='x' if lint_ok else ' ')
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f'{name}.md'
    path.write_text(fill(template.read_text(encoding='utf-8'), values), encoding='utf-8')
    return path
