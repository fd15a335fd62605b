"""The series in topics: the split, the stacked pull-request branches, what they exclude, and their descriptions."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forktool import description, pr, series, topics
from tests.fork_build.conftest import ROOT

#: Names that only the preemption topic may bring: the lifecycle branch must not contain any of them.
PREEMPTION_NAMES = (
    'StopRequest',
    'request_stop',
    'save_on_preemption',
    'handle_preemption',
    'exit_after_preemption',
    'engine_closing',
    '_force_quit',
    'shield_dataloader_workers',
    'warn_preemption_unavailable',
)

DOCS_PATCH = """\
Description: Document the new signal handling (placeholder made by the tests)
 A new page.
Bug: https://github.com/mosaicml/composer/issues/3151
Forwarded: not-yet
Last-Update: 2026-11-25
Topic: lifecycle
---
diff --git a/docs/source/notes/signal_handling.rst b/docs/source/notes/signal_handling.rst
new file mode 100644
--- /dev/null
+++ b/docs/source/notes/signal_handling.rst
@@ -0,0 +1,2 @@
+Signal handling
+===============
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(['git', *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def upstream_repo(upstream_sdist, tmp_path) -> Path:
    """A git checkout of the pinned upstream sdist (branch ``main``), as `make pr` gets a clone of upstream."""
    dest = tmp_path / 'upstream'
    series.extract_sdist(upstream_sdist, dest)
    for args in (['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'upstream']):
        subprocess.run(['git', *args], cwd=dest, check=True, env={**os.environ, **series._GIT_ENV})
    return dest


@pytest.fixture
def fork_copy(tmp_path) -> Path:
    """A copy of this repository's patches, overlay and tests, with a placeholder PR-only docs patch."""
    dest = tmp_path / 'fork'
    for name in ('patches', 'composer', 'tests'):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns('__pycache__'))
    extra = dest / 'patches' / topics.UPSTREAM_ONLY_DIR
    shutil.rmtree(extra, ignore_errors=True)
    extra.mkdir()
    (extra / '0001-document-signal-handling.patch').write_text(DOCS_PATCH, encoding='utf-8')
    (extra / 'series').write_text('0001-document-signal-handling.patch\n', encoding='utf-8')
    return dest


def test_every_patch_is_in_exactly_one_topic_in_series_order():
    names = topics.read_topic_names()
    assert [name for name, _ in names][:2] == ['lifecycle', 'preemption']
    assert [p for _, patches in names for p in patches] == [p.name for p in series.read_series()]
    assert topics.check_topics() == []
    assert topics.check_overlay() == []


def test_check_topics_names_a_patch_in_no_topic_in_two_topics_and_out_of_order(tmp_path):
    patches = tmp_path / 'patches'
    shutil.copytree(ROOT / 'patches', patches)
    text = (patches / 'topics').read_text()
    first, last = series.read_series()[0].name, series.read_series()[-1].name
    (patches / 'topics').write_text(text.replace(first + '\n', '') + f'\n[extra]\n{last}\n')
    problems = '\n'.join(topics.check_topics(patches))
    assert f'{first} belongs to no topic' in problems
    assert f'{last} belongs to more than one topic' in problems
    (patches / 'topics').write_text(text.replace(first + '\n', '') + f'\n[extra]\n{first}\n')
    assert 'another order than patches/series' in '\n'.join(topics.check_topics(patches))


def test_topic_states_end_in_the_final_files_and_the_lifecycle_state_has_no_preemption_code(tmp_path):
    states = topics.overlay_states(tmp_path / 'states')
    assert list(states) == [name for name, _ in topics.read_topic_names()]
    final = {rel: src.read_bytes() for src, rel in series.overlay_files()}
    assert {rel: src.read_bytes() for src, rel in topics.state_files(states['atomic-checkpoints'])} == final
    lifecycle = topics.state_files(states['lifecycle'])
    assert 'tests/signal_handling/test_preemption.py' not in {rel for _, rel in lifecycle}
    for src, rel in lifecycle:
        found = [name for name in PREEMPTION_NAMES if name in src.read_text()]
        assert not found, (rel, found)
    # Nothing fork-only in any state.
    for state in states.values():
        assert pr.fork_only([rel for _, rel in topics.state_files(state)]) == []


def test_overlay_export_reproduces_the_overlay_patches(tmp_path, fork_copy):
    states = topics.overlay_states(tmp_path / 'states', root=fork_copy)
    before = {p.name: p.read_text() for p in (fork_copy / 'patches' / 'overlay').glob('*.patch')}
    for path in (fork_copy / 'patches' / 'overlay').glob('*.patch'):
        path.unlink()
    topics.export_overlay_patches(tmp_path / 'states', root=fork_copy)
    after = {p.name: p.read_text() for p in (fork_copy / 'patches' / 'overlay').glob('*.patch')}
    assert after == before
    assert states  # the states were written where export reads them


def test_topic_branches_stack_and_hold_only_upstream_bound_files(upstream_repo, fork_copy):
    made = pr.make_topic_branches(upstream_repo, root=fork_copy)
    all_topics = topics.read_topics(fork_copy / 'patches')
    assert [b.branch for b in made] == [f'signals/{t.name}' for t in all_topics]
    base = 'main'
    for branch, topic in zip(made, all_topics):
        # Stacked: each branch starts at the previous one.
        assert git(upstream_repo, 'merge-base', base, branch.branch).strip() == git(upstream_repo, 'rev-parse',
                                                                                    base).strip()
        subjects = git(upstream_repo, 'log', '--reverse', '--format=%s', f'{base}..{branch.branch}').splitlines()
        expected = [p.subject for p in topic.patches] + [pr.overlay_commit_subject(topic, first=base == 'main')]
        expected += [p.subject for p in topic.upstream_only]
        assert subjects == expected
        changed = git(upstream_repo, 'diff', '--name-only', base, branch.branch).split()
        assert pr.fork_only(changed) == []
        assert not any(c.startswith(('tests/fork_build', 'tests/requirements')) for c in changed)
        patched = {f for p in topic.patches for f in p.files()} | {f for p in topic.upstream_only for f in p.files()}
        assert set(changed) - patched <= {rel for rel in changed if rel.startswith(('composer/utils/', 'tests/'))}
        base = branch.branch
    # The PR-only docs patch lands on its topic's branch.
    assert 'docs/source/notes/signal_handling.rst' in git(
        upstream_repo,
        'diff',
        '--name-only',
        'main',
        'signals/lifecycle',
    ).split()
    # The lifecycle branch carries none of the preemption code; the last branch holds the final files.
    lifecycle_files = git(upstream_repo, 'diff', '--name-only', 'main', 'signals/lifecycle').split()
    for rel in lifecycle_files:
        text = git(upstream_repo, 'show', f'signals/lifecycle:{rel}')
        added = '\n'.join(
            line for line in git(upstream_repo, 'diff', 'main', 'signals/lifecycle', '--', rel).split('\n')
            if line.startswith('+')
        )
        assert not [name for name in PREEMPTION_NAMES if name in added], rel
        assert text
    for src, rel in series.overlay_files(fork_copy):
        assert git(upstream_repo, 'show', f'signals/atomic-checkpoints:{rel}') == src.read_text(), rel


def test_one_topic_builds_the_earlier_ones_and_reuses_existing_branches(upstream_repo, fork_copy):
    made = pr.make_topic_branches(upstream_repo, topic='lifecycle', root=fork_copy)
    assert [(b.branch, b.created) for b in made] == [('signals/lifecycle', True)]
    git(upstream_repo, 'checkout', '-q', 'main')
    made = pr.make_topic_branches(upstream_repo, topic='preemption', root=fork_copy)
    assert [(b.branch, b.created) for b in made] == [('signals/lifecycle', False), ('signals/preemption', True)]
    assert made[1].upstream_commit == git(upstream_repo, 'rev-parse', 'main').strip()
    with pytest.raises(series.ForkError, match='already has a branch signals/preemption'):
        pr.make_topic_branches(upstream_repo, topic='preemption', root=fork_copy)
    with pytest.raises(series.ForkError, match='no topic'):
        pr.make_topic_branches(upstream_repo, topic='nope', root=fork_copy)


def test_check_against_a_checkout_applies_every_topic_and_names_what_breaks(upstream_repo, fork_copy):
    # fork_copy: the sdist has no docs/, so its PR-only patch is the placeholder (the real ones need a git checkout)
    problems, _ = pr.check_against_checkout(upstream_repo, root=fork_copy)
    assert problems == []
    engine = upstream_repo / 'composer' / 'core' / 'engine.py'
    engine.write_text(engine.read_text().replace('import signal', 'import signal  # moved'))
    git(upstream_repo, 'commit', '-qam', 'upstream moved on')
    problems, _ = pr.check_against_checkout(upstream_repo, root=fork_copy)
    assert problems and 'lifecycle: 0001-' in problems[0]


def test_pr_command_writes_a_description_without_evidence(upstream_repo, fork_copy, tmp_path):
    # The command as make runs it, on the fork copy (its PR-only patch fits the sdist, which has no docs/)
    for name in ('forktool', 'upstream.cfg', 'bench/results'):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, fork_copy / name)
    out = tmp_path / 'md'
    proc = subprocess.run(
        [sys.executable, '-m', 'forktool', 'pr', '--upstream',
         str(upstream_repo), '--no-evidence', '--out',
         str(out)],
        cwd=fork_copy,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    names = [name for name, _ in topics.read_topic_names()]
    assert sorted(p.stem for p in out.glob('*.md')) == sorted(names)
    text = (out / 'lifecycle.md').read_text()
    for heading in (
        '# What does this PR do?',
        '# What issue(s) does this change relate to?',
        '# Before submitting',
        '## Behaviour, before and after',
        '## Changes a user may notice',
        '## Evidence',
        '### Benchmarks',
    ):
        assert heading in text, heading
    assert 'Evidence was not collected' in text
    assert '| run | where | passed' not in text  # no invented counts
    assert 'issues/3151' in text and 'ray-project/ray#42893' in text and 'ray-project/ray#40035' in text
    assert 'KeyboardInterrupt' in text and 'launcher' in text
    assert '- [ ] Did you run the tests locally' in text
    preemption = (out / 'preemption.md').read_text()
    assert 'pull/3943' in preemption and 'stacks on `signals/lifecycle`' in preemption
    assert 'opt-in' in preemption


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="7" time="3.2">
<testcase classname="tests.signal_handling.test_import" name="test_a" time="0.1"/>
<testcase classname="tests.signal_handling.test_import" name="test_b" time="0.1"><failure message="x"/></testcase>
<testcase classname="tests.signal_handling.test_lifecycle" name="test_c" time="0.1"><failure message="y"/></testcase>
<testcase classname="tests.signal_handling.test_lifecycle" name="test_d" time="0.1"><error message="z"/></testcase>
<testcase classname="tests.signal_handling.test_ray" name="test_e" time="0.1"><skipped message="no ray"/></testcase>
<testcase classname="tests.signal_handling.test_flag" name="test_f" time="0.1"/>
<testcase classname="tests.signal_handling.test_flag" name="test_g" time="0.1"/>
</testsuite></testsuites>
"""


def test_junit_counts_and_the_evidence_table(tmp_path):
    report = tmp_path / 'junit.xml'
    report.write_text(JUNIT)
    passed, failed, errors, skipped, names = description.parse_junit(report)
    assert (passed, failed, errors, skipped) == (3, 2, 1, 1)
    assert description.failure_messages(report)['tests.signal_handling.test_lifecycle::test_c'] == 'y'
    assert names == [
        'tests.signal_handling.test_import::test_b',
        'tests.signal_handling.test_lifecycle::test_c',
        'tests.signal_handling.test_lifecycle::test_d',
    ]
    topic = topics.read_topics()[0]
    branch = pr.TopicBranch(topic, 'signals/lifecycle', 'main', 'a' * 40, True, 'a' * 40)
    runs = [
        description.TestRun(
            'this topic\'s tests',
            '`signals/lifecycle`',
            ['tests/signal_handling'],
            passed=40,
            skipped=2,
            seconds=9.0,
        ),
        description.TestRun(
            'the same tests',
            'unpatched upstream',
            ['tests/signal_handling'],
            on_base=True,
            passed=20,
            failed=22,
            seconds=8.0,
            failed_names=['tests.signal_handling.test_import::test_b'],
        ),
        description.TestRun(
            'upstream tests',
            '`signals/lifecycle`',
            ['tests/test_cli.py'],
            passed=3,
            failed=1,
            failed_names=['tests.test_cli::test_cli_version'],
        ),
        description.TestRun(
            'upstream tests',
            'unpatched upstream',
            ['tests/test_cli.py'],
            on_base=True,
            passed=3,
            failed=1,
            failed_names=['tests.test_cli::test_cli_version'],
        ),
    ]
    text = description.render(branch, 'abc1234 (2025-07-25, release)', runs, stack=[])
    assert '| this topic\'s tests | `signals/lifecycle` | 40 | 0 | 0 | 2 | 9 s |' in text
    assert '| the same tests | unpatched upstream | 20 | 22 | 0 | 0 | 8 s |' in text
    assert '`tests.signal_handling.test_import::test_b`' in text
    assert 'fail on the branch but not on the base: none' in text  # test_cli fails on both: not this PR
    assert '- [x] Did you run the tests locally to make sure they pass? (1 of upstream\'s tests fail on the base' in text
    assert re.search(r'against upstream `abc1234', text)
    runs[2].failed_names.append('tests.test_engine::test_new_failure')
    text = description.render(branch, 'abc1234 (2025-07-25, release)', runs, stack=[])
    assert 'fail on the branch but not on the base: `tests.test_engine::test_new_failure`' in text
    assert '- [ ] Did you run the tests locally' in text


def test_the_pre_commit_box_is_ticked_only_when_the_hooks_ran_and_passed():
    topic = topics.read_topics()[0]
    branch = pr.TopicBranch(topic, 'signals/lifecycle', 'main', 'a' * 40, True, 'a' * 40)
    runs = [description.TestRun('this topic\'s tests', '`signals/lifecycle`', ['tests/signal_handling'], passed=5)]
    head = 'abc1234 (2025-07-25, release)'
    box = '- [x] Did you run `pre-commit` on your change?'
    assert box not in description.render(branch, head, runs, stack=[])
    passed = description.LintRun(['lint-upstream: 3 files changed', '  ruff: ok (3 files)', '  yamllint: no files'], [])
    text = description.render(branch, head, runs, stack=[], lint_run=passed)
    assert box in text
    assert '### pre-commit' in text and '\nruff: ok (3 files)\nyamllint: no files\n' in text
    assert 'lint-upstream: 3 files' not in text
    failed = description.LintRun(['  ruff: FAILED (3 files)'],
                                 ['ruff:\ncomposer/x.py:1:8: F401 `os` imported but unused'])
    text = description.render(branch, head, runs, stack=[], lint_run=failed)
    assert box not in text and 'F401 `os` imported but unused' in text
    broken = description.LintRun([], [], error='could not install pyright')
    text = description.render(branch, head, runs, stack=[], lint_run=broken)
    assert box not in text and 'The hooks could not run:** could not install pyright' in text
