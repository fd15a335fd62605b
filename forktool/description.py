"""The pull-request description of a topic's branch, ``build/pr/<topic>.md``, with the evidence gathered in this run.

It follows upstream's ``.github/PULL_REQUEST_TEMPLATE.md`` (what the PR does, the issues it relates to, the
"Before submitting" checklist). Upstream deleted its CI workflows (mosaicml/composer#3934), so the description
carries its own evidence: the topic's tests on the branch, the same tests on the branch's base (they catch the bug
there), upstream's own tests of the modules the topic changes, run on the branch, upstream's pre-commit hooks on the
files the branch changes (:mod:`forktool.lint`), and the last benchmark table. Numbers only come from runs made here:
without evidence the description says it was not collected.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from forktool import ForkError, lint
from forktool.pr import TopicBranch, overlay_commit_subject
from forktool.series import _git
from forktool.topics import overlay_states, read_topics, state_files
from forktool.upstream import ROOT

#: Upstream's tests of the upstream modules the patches change (run on the branch). Node ids keep the time bounded.
UPSTREAM_TESTS = {
    'composer/core/engine.py': ['tests/test_engine.py'],
    'composer/cli/launcher.py': ['tests/test_cli.py'],
    'composer/trainer/trainer.py': [
        'tests/trainer/test_trainer.py::TestTrainerInit',
        'tests/trainer/test_trainer.py::TestTrainerEvents',
    ],
    'composer/callbacks/checkpoint_saver.py': ['tests/callbacks/test_checkpoint_saver.py'],
    'composer/utils/checkpoint.py': [
        'tests/trainer/test_checkpoint.py::TestCheckpointSaving',
        'tests/trainer/test_checkpoint.py::test_rotate_checkpoints',
    ],
}
BENCHMARK_TABLE = ROOT / 'bench' / 'results' / 'latest.md'
#: Seconds one pytest run may take before it is stopped (and reported as such).
RUN_TIMEOUT = float(os.environ.get('FORK_PR_TEST_TIMEOUT', '1800'))

_UPSTREAM = 'https://github.com/mosaicml/composer'
_ISSUE_3151 = f'[mosaicml/composer#3151]({_UPSTREAM}/issues/3151)'
_RAY_42893 = '[ray-project/ray#42893](https://github.com/ray-project/ray/issues/42893)'
_RAY_40035 = '[ray-project/ray#40035](https://github.com/ray-project/ray/issues/40035)'


@dataclass(frozen=True)
class TopicText:
    """What a reviewer reads about one topic: summary, behaviour table, noticeable changes, related issues."""

    summary: str
    behaviour: tuple[tuple[str, str, str], ...]  # (situation, before, after)
    notice: tuple[str, ...]
    issues: tuple[str, ...]
    discussed: bool  # was the change discussed in an upstream issue first?


TOPIC_TEXT = {
    'lifecycle':
        TopicText(
            summary=(
                'Importing `composer.core.engine` calls `signal.signal(SIGTERM/SIGINT, ...)`. Python allows that only '
                'on the main thread of the main interpreter, and frameworks own those signals themselves: importing '
                f'Composer in a worker thread warns ({_ISSUE_3151}); under Ray it raises inside `DeferSigint` or '
                f'silently replaces Ray\'s SIGINT handler that `ray.cancel` relies on ({_RAY_42893}, {_RAY_40035}); '
                'and a bare `import composer` replaces the application\'s own Ctrl-C/SIGTERM behaviour.\n\n'
                'This PR moves signal setup into the Engine\'s lifetime, in a new module '
                '`composer.utils.signal_handling`: the engine acquires a lease on the handlers when it starts and the '
                'last lease released (`close()`, garbage collection or interpreter exit) restores the previous '
                'handlers exactly. Composer\'s handler chains to the handler it replaced (the user\'s, Python\'s '
                '`KeyboardInterrupt`, Ray\'s); only where the OS default was in place does SIGTERM become '
                '`SystemExit(143)`, so the engine still closes and checkpoints are flushed. Where handlers cannot be '
                'installed (a worker thread, a sub-interpreter, a refusing framework) training continues with one '
                'warning per process; in a Ray worker Composer leaves the signals to Ray. The `composer` launcher '
                'acquires the handlers explicitly for its clean-up of the ranks, and '
                '`Trainer(enable_signal_handling=False)` / `COMPOSER_SIGNAL_HANDLING=0` opt out.'
            ),
            behaviour=(
                ('`import composer`', 'installs SIGTERM/SIGINT handlers', 'touches nothing'),
                ('handlers installed', 'forever, from import', 'while a Trainer/Engine is open'),
                ('your own handler installed before', 'replaced', 'still called, and restored after'),
                ('Ctrl-C (SIGINT) under Python\'s default', '`sys.exit(130)`', '`KeyboardInterrupt`'),
                ('Trainer in a worker thread', 'warning at import', 'one warning at construction, with remedies'),
                ('inside a Ray worker / Ray Train', 'replaces Ray\'s SIGINT handler or raises', 'left to Ray (INFO)'),
                ('SIGTERM during `fit()` (OS default before)', '`SystemExit(143)`', '`SystemExit(143)`, unchanged'),
                ('opting out', 'not possible', '`enable_signal_handling=False` or `COMPOSER_SIGNAL_HANDLING=0`'),
            ),
            notice=(
                'SIGINT under Python\'s default handler now raises `KeyboardInterrupt` instead of `SystemExit(130)` '
                '(the engine still closes, at exit).',
                'The `composer` launcher acquires the handlers explicitly for `main()`: `composer.cli.launcher` no '
                'longer depends on an import side effect to clean up its ranks on SIGTERM.',
                'Handlers exist only while an engine is open: code that relied on `import composer` installing them '
                'must create a Trainer (or call `composer.utils.signal_handling.acquire_signal_handlers()`).',
            ),
            issues=(
                f'Fixes {_ISSUE_3151}',
                f'Related to {_RAY_42893} and {_RAY_40035}',
            ),
            discussed=True,
        ),
    'preemption':
        TopicText(
            summary=(
                'Spot instances, Kubernetes and SLURM end jobs with SIGTERM, a grace period, then SIGKILL. Upstream '
                'turns SIGTERM into an immediate exit, and every batch since the last periodic checkpoint is lost. '
                'This PR, on top of the signal-handling lifecycle PR, adds an opt-in `Trainer(save_on_preemption=True)`'
                ': on SIGTERM during `fit()` every rank stops after the batch in flight (the stop vote travels in the '
                'samples/tokens all-reduce Composer already does after every batch: no extra collective), a checkpoint '
                'of exactly that batch is written through the normal checkpointing, and `fit()` raises '
                '`SystemExit(143)` after the engine closed. `Trainer.request_stop()` is the same stop without a '
                'signal, from any thread or a signal handler; a second SIGTERM/SIGINT while stopping or closing exits '
                'at once with 128 + signal number.\n\n'
                'The last patch (close each engine once: `close()` unregisters the engine\'s own exit hook) duplicates '
                f'upstream\'s open pull request [#3943]({_UPSTREAM}/pull/3943); it is needed here because a preemption '
                'exit closes the engine before raising, and should be dropped from this PR once #3943 is merged.'
            ),
            behaviour=(
                (
                    'SIGTERM during `fit()` with `save_on_preemption=True`',
                    '(no such option)',
                    'stop after the batch in flight on every rank, checkpoint it, exit 143',
                ),
                ('stop training from another thread', 'not possible', '`trainer.request_stop()`'),
                (
                    'a second SIGTERM/SIGINT while stopping or closing',
                    '`SystemExit` again, wherever the main thread is',
                    'exits at once with 128 + signal number',
                ),
                ('callbacks\' `close()` after `trainer.close()`', 'run again at interpreter exit', 'run once'),
            ),
            notice=(
                'Preemption handling is opt-in: without `save_on_preemption=True` SIGTERM behaves as in the lifecycle '
                'PR (exit 143 after the engine closed).',
                'A second SIGTERM/SIGINT while Composer stops or closes after a first one ends the process at once '
                '(exit code 128 + signal number), without waiting for slow callbacks or uploads.',
                'DataLoader workers of a trainer fitting with `save_on_preemption=True` block SIGTERM; their parent '
                'stops them after saving.',
            ),
            issues=(
                f'Related to {_ISSUE_3151} (stacks on its fix)',
                f'Related to [#3943]({_UPSTREAM}/pull/3943) (its last patch duplicates it)',
            ),
            discussed=False,
        ),
    'atomic-checkpoints':
        TopicText(
            summary=(
                'A process killed (SIGKILL after a preemption grace period, OOM) while Composer writes a checkpoint '
                'or updates the `latest` symlink can leave a truncated checkpoint or a dangling symlink, and '
                'autoresume then fails. This PR writes checkpoints and the symlink to a temporary name and renames '
                'them into place (atomic on POSIX file systems). It is independent of the signal-handling PRs.'
            ),
            behaviour=(
                (
                    'SIGKILL while a checkpoint is written',
                    'a truncated file under the final name may remain',
                    'the previous checkpoint stays intact; no partial file under the final name',
                ),
                ('SIGKILL while `latest` is updated', 'the symlink may be missing or dangling', 'old or new target'),
            ),
            notice=('A temporary file next to the checkpoint may be left behind by a killed process.',),
            issues=(f'Related to {_ISSUE_3151} (stacked on the signal-handling PRs, but independent of them)',),
            discussed=False,
        ),
}


@dataclass(frozen=True)
class LintRun:
    """Upstream's pre-commit hooks (as :mod:`forktool.lint` runs them) on the files ``base..branch`` changes."""

    lines: list[str]  # what each hook said: ok, FAILED, no files, not run
    problems: list[str]  # the findings; empty if every hook that ran passed
    error: str = ''  # the hooks could not run (e.g. no network for the tools)


@dataclass
class TestRun:
    """One pytest run made for the evidence."""

    label: str
    where: str
    targets: list[str]
    on_base: bool = False  # run on the branch's base (failures expected for the topic's own tests)
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed_names: list[str] = field(default_factory=list)
    note: str = ''
    messages: dict[str, str] = field(default_factory=dict)  # failed test -> the first line of its failure message

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def parse_junit(path: Path) -> tuple[int, int, int, int, list[str]]:
    """Counts from a pytest ``--junitxml`` report: (passed, failed, errors, skipped, names of failed/errored tests)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    tests = failures = errors = skipped = 0
    for suite in suites:
        tests += int(suite.get('tests', 0))
        failures += int(suite.get('failures', 0))
        errors += int(suite.get('errors', 0))
        skipped += int(suite.get('skipped', 0))
    failed_names = []
    for case in root.iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            failed_names.append(f'{case.get("classname", "")}::{case.get("name", "")}'.lstrip(':'))
    return tests - failures - errors - skipped, failures, errors, skipped, failed_names


def failure_messages(path: Path) -> dict[str, str]:
    """The first line of each failed or errored test's message in a pytest ``--junitxml`` report, by test name."""
    messages = {}
    for case in ET.parse(path).getroot().iter('testcase'):
        problem = case.find('failure')
        if problem is None:
            problem = case.find('error')
        if problem is not None:
            name = f'{case.get("classname", "")}::{case.get("name", "")}'.lstrip(':')
            message = (problem.get('message') or '').strip()
            messages[name] = message.splitlines()[0][:160] if message else ''
    return messages


def run_pytest(
    checkout: Path,
    targets: list[str],
    label: str,
    where: str,
    on_base: bool = False,
    timeout: float = RUN_TIMEOUT,
) -> TestRun:
    """Run pytest on ``targets`` inside ``checkout``, with upstream's own pytest configuration.

    A test file that cannot be imported (on the base, the module under test may not exist) is an error of that file,
    not the end of the run (``--continue-on-collection-errors``).
    """
    run = TestRun(label=label, where=where, targets=targets, on_base=on_base)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / 'junit.xml'
        command = [
            sys.executable,
            '-m',
            'pytest',
            '-p',
            'no:cacheprovider',
            '-q',
            '--continue-on-collection-errors',
            f'--junitxml={report}',
            *targets,
        ]
        # As in an activated venv: upstream's tests run `python` and `composer` from PATH.
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, 'PYTHONPATH': str(checkout), 'PATH': bin_dir + os.pathsep + os.environ.get('PATH', '')}
        started = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            run.seconds = time.monotonic() - started
            run.note = f'stopped after {timeout:.0f} s (timeout); no counts'
            return run
        run.seconds = time.monotonic() - started
        if report.is_file():
            run.passed, run.failed, run.errors, run.skipped, run.failed_names = parse_junit(report)
            run.messages = failure_messages(report)
        else:
            run.note = f'pytest exited with {proc.returncode} and wrote no report: {proc.stderr.strip()[-300:]}'
    return run


def topic_test_files(state: Path, changed: Optional[set[str]]) -> list[str]:
    """The topic's test files: all in its state for the first topic, else those its overlay patch adds or changes."""
    files = [rel for _, rel in state_files(state) if re.search(r'^tests/.*/test_[^/]+\.py$', rel)]
    return [rel for rel in files if changed is None or rel in changed]


def upstream_test_targets(files: list[str], checkout: Path) -> list[str]:
    """Upstream's tests of the changed upstream files (see :data:`UPSTREAM_TESTS`) that exist in ``checkout``."""
    targets = []
    for rel in files:
        for target in UPSTREAM_TESTS.get(rel, []):
            if (checkout / target.split('::')[0]).is_file() and target not in targets:
                targets.append(target)
    return targets


@contextlib.contextmanager
def _worktree(upstream: Path, rev: str, path: Path) -> Iterator[Path]:
    """A detached worktree of ``upstream`` at ``rev`` in ``path``, removed (and pruned) on exit."""
    _git(['worktree', 'add', '-q', '--detach', str(path), rev], cwd=upstream)
    try:
        yield path
    finally:
        _git(['worktree', 'remove', '--force', str(path)], cwd=upstream, check=False)
        _git(['worktree', 'prune'], cwd=upstream, check=False)


def collect_evidence(branch: TopicBranch, upstream: Path, root: Path = ROOT) -> list[TestRun]:
    """Run the topic's tests, then upstream's tests of the modules it changes, each on the branch and on its base."""
    topics = read_topics(root / 'patches')
    names = [t.name for t in topics]
    index = names.index(branch.topic.name)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        states = overlay_states(Path(tmp) / 'states', topics, root)
        state = states[branch.topic.name]
        changed = None
        if index > 0:
            overlay = branch.topic.overlay_patch(root / 'patches')
            text = overlay.read_text(encoding='utf-8') if overlay.is_file() else ''
            changed = set(re.findall(r'(?m)^\+\+\+ b/(.+)$', text))
        fork_tests = topic_test_files(state, changed)
        on_branch = Path(tmp) / 'branch'
        on_base = Path(tmp) / 'base'
        with _worktree(upstream, branch.branch, on_branch), _worktree(upstream, branch.base_commit, on_base):
            base_name = 'unpatched upstream' if index == 0 else f'the previous topic\'s branch ({branch.base})'
            base_where = f'{base_name} (`{branch.base_commit[:9]}`)'
            if fork_tests:
                runs.append(run_pytest(on_branch, fork_tests, 'this topic\'s tests', f'`{branch.branch}`'))
                # The same test files (and their conftest) on the base: their failures show what the topic fixes.
                for src, rel in state_files(state):
                    if rel.startswith('tests/') and (rel in fork_tests or not Path(rel).name.startswith('test_')):
                        (on_base / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, on_base / rel)
                runs.append(run_pytest(on_base, fork_tests, 'the same tests', base_where, on_base=True))
            targets = upstream_test_targets(branch.topic.files(), on_branch)
            if targets:
                label = 'upstream\'s tests of the changed modules'
                runs.append(run_pytest(on_branch, targets, label, f'`{branch.branch}`'))
                # On the base too: a test that fails there as well fails for a reason this topic does not change.
                runs.append(run_pytest(on_base, targets, label, base_where, on_base=True))
    return runs


def collect_lint(branch: TopicBranch, upstream: Path) -> LintRun:
    """Run upstream's pre-commit hooks on what the branch changes since its base, in a worktree of the branch."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, _worktree(upstream, branch.branch, Path(tmp) / 'branch') as worktree:
        try:
            problems = lint.lint_upstream(worktree, branch.base_commit, python=sys.executable, log=lines.append)
        except ForkError as e:
            return LintRun(lines, [], error=str(e))
    return LintRun(lines, problems)


def _lint_section(lint_run: LintRun) -> list[str]:
    out = [
        'Upstream\'s `.pre-commit-config.yaml` hooks at their pinned versions, on the files this PR adds or changes '
        '(forktool reproduces them: pre-commit itself cannot fetch the hook repositories here):',
        '',
    ]
    if lint_run.error:
        return out + [f'**The hooks could not run:** {lint_run.error}', '']
    out += ['```'] + [line.strip() for line in lint_run.lines if line.startswith('  ')] + ['```', '']
    if lint_run.problems:
        out += ['Findings:', '', '```'] + '\n\n'.join(lint_run.problems).splitlines() + ['```', '']
    return out


def _benchmark_section() -> list[str]:
    if not BENCHMARK_TABLE.is_file():
        return ['No benchmark table is committed (bench/results/latest.md).']
    text = BENCHMARK_TABLE.read_text(encoding='utf-8').strip()
    return [
        'The fork\'s last committed benchmark run (`bench/run.py`, upstream 0.32.1 vs. the whole series; not re-run '
        'by `make pr`), as recorded in its header:',
        '',
        text,
    ]


def _runs_table(runs: list[TestRun]) -> list[str]:
    lines = [
        '| run | where | passed | failed | errors | skipped | time |',
        '| --- | --- | --- | --- | --- | --- | --- |',
    ]
    for run in runs:
        if run.note:
            lines.append(f'| {run.label} | {run.where} | {run.note} | | | | {run.seconds:.0f} s |')
        else:
            lines.append(
                f'| {run.label} | {run.where} | {run.passed} | {run.failed} | {run.errors} | {run.skipped} | '
                f'{run.seconds:.0f} s |',
            )
    lines.append('')
    for run in runs:
        lines.append(f'- {run.label} on {run.where}: `pytest {" ".join(run.targets)}`')
        if run.failed_names and not run.on_base:
            for name in run.failed_names[:25]:
                message = run.messages.get(name, '').replace('|', '\\|').replace('`', "'")
                lines.append(f'  - failing: `{name}`' + (f': {message}' if message else ''))
        elif run.failed_names:
            shown = run.failed_names[:25]
            more = f' and {len(run.failed_names) - len(shown)} more' if len(run.failed_names) > len(shown) else ''
            lines.append('  failing: ' + ', '.join(f'`{name}`' for name in shown) + more)
    return lines


def _new_failures(runs: list[TestRun]) -> list[str]:
    """Tests that fail on the branch: any of the topic's own, and upstream's that do not fail on the base as well."""
    failing = []
    for run in runs:
        if run.on_base:
            continue
        base = [r for r in runs if r.on_base and r.label == run.label]
        if run.label == 'this topic\'s tests' or not base:
            failing += run.failed_names
        else:
            failing += [name for name in run.failed_names if name not in base[0].failed_names]
    return failing


def _comparison(runs: list[TestRun]) -> list[str]:
    out = []
    if any(r.on_base and r.label == 'the same tests' for r in runs):
        out += [
            'The topic\'s tests are expected to fail on the base: those failures are the bugs (or the missing '
            'feature) this PR addresses.',
            '',
        ]
    if any(r.on_base and r.label != 'the same tests' for r in runs):
        new = _new_failures([r for r in runs if r.label != 'this topic\'s tests'])
        out += [
            'Upstream\'s tests that fail on the branch but not on the base: ' +
            (', '.join(f'`{n}`' for n in new) if new else 'none') + '. (Tests failing on both fail for reasons '
            'outside this PR, e.g. the environment: see the lists above.)',
            '',
        ]
    return out


def render(
    branch: TopicBranch,
    upstream_head: str,
    runs: Optional[list[TestRun]],
    stack: list[str],
    lint_run: Optional[LintRun] = None,
) -> str:
    """The description's Markdown. ``runs`` and ``lint_run`` are ``None`` when no evidence was collected."""
    topic = branch.topic
    text = TOPIC_TEXT.get(
        topic.name,
    ) or TopicText(summary='(no summary recorded for this topic)', behaviour=(), notice=(), issues=(), discussed=False)
    out = ['# What does this PR do?', '', text.summary, '']
    if stack:
        out += [
            f'This branch (`{branch.branch}`) stacks on `{branch.base}`: review and merge ' +
            ', then '.join(f'`{s}`' for s in stack) + ' first. This PR\'s own commits are '
            f'`{branch.base}..{branch.branch}`.',
            '',
        ]
    if text.behaviour:
        out += ['## Behaviour, before and after', '', '| | before | after |', '| --- | --- | --- |']
        out += [f'| {a} | {b} | {c} |' for a, b, c in text.behaviour] + ['']
    if text.notice:
        out += ['## Changes a user may notice', ''] + [f'- {n}' for n in text.notice] + ['']
    out += ['## Commits', '']
    out += [f'- {p.subject}' for p in topic.patches]
    out += [f'- {overlay_commit_subject(topic, first=not stack)}']
    out += [f'- {p.subject} (docs)' for p in topic.upstream_only]
    out += ['', '## Evidence', '']
    out += [
        'Upstream has no CI workflows any more (mosaicml/composer#3934), so this PR brings its own evidence, gathered '
        f'by `make pr` (forktool) on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC against '
        f'upstream `{upstream_head}`, with upstream\'s own pytest configuration (pyproject.toml), on '
        f'Python {sys.version.split()[0]}.',
        '',
    ]
    if runs is None:
        out += [
            '**Evidence was not collected in this run** (`make pr ... EVIDENCE=0` / `--no-evidence`); no test counts '
            'are claimed here. Re-run `make pr UPSTREAM=<checkout> TOPIC=' + topic.name + '` to collect them.',
            '',
        ]
    elif not runs:
        out += ['This topic has no tests of its own and changes no module that upstream tests map to.', '']
    else:
        out += _runs_table(runs) + ['']
        out += _comparison(runs)
    if lint_run is not None:
        out += ['### pre-commit', ''] + _lint_section(lint_run)
    out += ['### Benchmarks', ''] + _benchmark_section() + ['']
    out += ['# What issue(s) does this change relate to?', ''] + [f'- {i}' for i in text.issues] + ['']
    branch_ok = runs is not None and bool(runs) and not any(r.note for r in runs) and not _new_failures(runs)
    docs = bool(topic.upstream_only)
    # Upstream's tests failing on the branch count against the box only if they pass on the base (_new_failures).
    shared = sum(len(r.failed_names) for r in runs or () if not r.on_base and r.label != 'this topic\'s tests')
    tests_note = ' (See Evidence: not collected, or not all passing.)' if not branch_ok else (
        f' ({shared} of upstream\'s tests fail on the base as well, for reasons outside this PR: see Evidence.)'
        if shared else ''
    )
    lint_ok = lint_run is not None and not lint_run.error and not lint_run.problems
    out += [
        '# Before submitting',
        '- [x] Have you read the [contributor guidelines](https://github.com/mosaicml/composer/blob/main/'
        'CONTRIBUTING.md)?',
        '- [ ] Is this change a documentation change or typo fix? If so, skip the rest of this checklist.',
        f'- [{"x" if text.discussed else " "}] Was this change discussed/approved in a GitHub issue first? It is much '
        'more likely to be merged if so.' + ('' if text.discussed else ' (Not yet: this PR opens the discussion.)'),
        f'- [{"x" if docs else " "}] Did you update any related docs and document your change?' +
        ('' if docs else ' (No docs change in this topic.)'),
        '- [x] Did you update any related tests and add any new tests related to your change? (see [testing]'
        '(https://github.com/mosaicml/composer/blob/main/CONTRIBUTING.md#running-tests))',
        f'- [{"x" if branch_ok else " "}] Did you run the tests locally to make sure they pass?{tests_note}',
        f'- [{"x" if lint_ok else " "}] Did you run `pre-commit` on your change? (see the `pre-commit` section of '
        '[prerequisites](https://github.com/mosaicml/composer/blob/main/CONTRIBUTING.md#prerequisites)) ' +
        ('(Its hooks, reproduced by forktool: see Evidence.)' if lint_ok else '(See Evidence: not run, or findings.)'),
        '',
    ]
    return '\n'.join(out)


def write_description(branch: TopicBranch, upstream: Path, out_dir: Path, evidence: bool = True) -> Path:
    """Collect the evidence (unless ``evidence`` is false) and write ``out_dir/<topic>.md``."""
    names = [t.name for t in read_topics()]
    stack = [f'{branch.branch.rsplit("/", 1)[0]}/{n}' for n in names[:names.index(branch.topic.name)]]
    head = _git(['log', '-1', '--format=%h (%cs, %s)', branch.upstream_commit], cwd=upstream).stdout.strip()
    runs = collect_evidence(branch, upstream) if evidence else None
    lint_run = collect_lint(branch, upstream) if evidence else None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f'{branch.topic.name}.md'
    path.write_text(render(branch, head, runs, stack, lint_run), encoding='utf-8')
    return path
