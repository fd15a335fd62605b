"""The series in topics: own files per topic, the pull-request branches, every commit of them, their descriptions."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forktool import pr, series, topics
from tests.fork_build.conftest import ROOT

#: Names that only the preemption topic may bring: no file of the lifecycle topic may mention them.
PREEMPTION_NAMES = (
    'StopRequest',
    'request_stop',
    'save_on_preemption',
    'COMPOSER_SAVE_ON_PREEMPTION',
    'handle_preemption',
    'exit_after_preemption',
    'shield_dataloader_workers',
    'warn_preemption_unavailable',
    'composer.utils.preemption',
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(['git', *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _docs_patch(tmp_path: Path) -> str:
    """A PR-only patch that fits the sdist (which has no docs/), in `git format-patch` form."""
    repo = tmp_path / 'docs-repo'
    repo.mkdir()
    env = {**os.environ, **series._GIT_ENV}
    subprocess.run(['git', 'init', '-q'], cwd=repo, check=True)
    subprocess.run(['git', 'commit', '-q', '--allow-empty', '-m', 'base'], cwd=repo, check=True, env=env)
    (repo / 'docs/source/notes').mkdir(parents=True)
    (repo / 'docs/source/notes/signal_handling.rst').write_text('Signal handling\n===============\n')
    subprocess.run(['git', 'add', '-A'], cwd=repo, check=True)
    message = (
        'Document the new signal handling (placeholder made by the tests)\n\n'
        'Description: Document the new signal handling (placeholder made by the tests)\n A new page.\n'
        'Bug: https://github.com/mosaicml/composer/issues/3151\nForwarded: not-yet\nLast-Update: 2026-12-01\n'
        'Topic: lifecycle\n'
    )
    subprocess.run(['git', 'commit', '-q', '--cleanup=verbatim', '-m', message], cwd=repo, check=True, env=env)
    return git(repo, *series.FORMAT_PATCH_ARGS, '--stdout', '-1')


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
    """A copy of this repository's patches, composer/ and tests, with a placeholder PR-only docs patch."""
    dest = tmp_path / 'fork'
    for name in ('patches', 'composer', 'tests'):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns('__pycache__'))
    extra = dest / 'patches' / topics.UPSTREAM_ONLY_DIR
    shutil.rmtree(extra, ignore_errors=True)
    extra.mkdir()
    (extra / '0001-document.patch').write_text(_docs_patch(tmp_path), encoding='utf-8')
    (extra / 'series').write_text('0001-document.patch\n', encoding='utf-8')
    return dest


def test_every_file_of_ours_is_in_exactly_one_topic_and_the_topics_follow_the_series():
    assert topics.check_topics() == []
    all_topics = topics.read_topics()
    assert [t.name for t in all_topics] == [
        'lifecycle',
        'preemption',
        'atomic-checkpoints',
        'launcher-cleanup-timeout',
        'autoresume-fallback',
    ]
    assert [t.base for t in all_topics] == ['upstream', 'lifecycle', 'upstream', 'lifecycle', 'upstream']
    assert [p for t in all_topics for p in t.patches] == series.read_series()
    assert all(t.patches and t.tests for t in all_topics)


def test_check_topics_names_a_file_in_no_topic_in_two_topics_a_missing_one_and_a_bad_base(tmp_path):
    root = tmp_path / 'root'
    for name in ('patches', 'composer', 'tests'):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns('__pycache__'))
    (root / 'composer/utils/stray.py').write_text('"""Stray."""\n')
    path = root / 'patches' / 'topics'
    text = path.read_text()
    path.write_text(
        text.replace('base = lifecycle', 'base = atomic-checkpoints') +
        '\n[extra]\nmodules = composer/utils/preemption.py composer/utils/gone.py\n',
    )
    problems = '\n'.join(topics.check_topics(root / 'patches', root))
    assert 'composer/utils/stray.py belongs to no topic' in problems
    assert 'composer/utils/preemption.py belongs to more than one topic' in problems
    assert 'composer/utils/gone.py does not exist' in problems
    assert '[preemption] base = atomic-checkpoints: must be `upstream` or an earlier topic' in problems
    assert 'are not those of topics' in problems  # [extra] has no patches in the series


def test_the_lifecycle_files_know_nothing_of_preemption_and_the_checkpoint_topics_nothing_of_signals():
    by_name = {t.name: t for t in topics.read_topics()}
    for rel in by_name['lifecycle'].own_files:
        text = (ROOT / rel).read_text()
        assert not [name for name in PREEMPTION_NAMES if name in text], rel
    for name in ('atomic-checkpoints', 'autoresume-fallback'):
        for rel in by_name[name].own_files:
            assert 'signal_handling' not in (ROOT / rel).read_text(), rel
        for patch in by_name[name].patches:
            assert 'signal_handling' not in patch.diff and 'import signal' not in patch.diff, patch.name


def test_export_refuses_a_commit_that_mixes_files_of_ours_with_upstream_files_and_an_unowned_file(tmp_path, fork_copy):
    tree = tmp_path / 'tree'
    series.make_tree(tree, root=fork_copy)
    env = {**os.environ, **series._GIT_ENV}
    engine = tree / 'composer/core/engine.py'
    engine.write_text(engine.read_text() + '\n')
    module = tree / 'composer/utils/signal_handling.py'
    module.write_text(module.read_text() + '\n')
    subprocess.run(['git', 'commit', '-qam', 'mixed'], cwd=tree, check=True, env=env)
    subprocess.run(['git', 'branch', '-f', 'topic/autoresume-fallback'], cwd=tree, check=True)
    with pytest.raises(series.ForkError, match='changes both upstream files and files of ours'):
        series.export(tree, fork_copy / 'patches', root=fork_copy)
    subprocess.run(['git', 'reset', '-q', '--hard', 'HEAD~1'], cwd=tree, check=True)
    (tree / 'composer/utils/new_module.py').write_text('"""New."""\n')
    subprocess.run(['git', 'add', '-A'], cwd=tree, check=True)
    subprocess.run(['git', 'commit', '-qm', 'new module'], cwd=tree, check=True, env=env)
    with pytest.raises(series.ForkError, match='new files that no topic owns: composer/utils/new_module.py'):
        series.export(tree, fork_copy / 'patches', root=fork_copy)


def test_topic_branches_start_from_their_base_and_hold_only_upstream_bound_files(upstream_repo, fork_copy):
    made = pr.make_topic_branches(upstream_repo, root=fork_copy)
    all_topics = topics.read_topics(fork_copy / 'patches', fork_copy)
    assert [b.branch for b in made] == [f'signals/{t.name}' for t in all_topics]
    main = git(upstream_repo, 'rev-parse', 'main').strip()
    for branch, topic in zip(made, all_topics):
        base = 'main' if topic.base == 'upstream' else f'signals/{topic.base}'
        assert branch.base_commit == git(upstream_repo, 'rev-parse', base).strip()
        assert git(upstream_repo, 'merge-base', base, branch.branch).strip() == branch.base_commit
        subjects = git(upstream_repo, 'log', '--reverse', '--format=%s', f'{base}..{branch.branch}').splitlines()
        expected = [topic.modules_message(fork_copy).splitlines()[0]] if topic.modules else []
        expected += [p.subject for p in topic.patches] + [topic.tests_message().splitlines()[0]]
        expected += [p.subject for p in topic.upstream_only]
        assert subjects == expected
        changed = git(upstream_repo, 'diff', '--name-only', base, branch.branch).split()
        assert pr.fork_only(changed) == []
        patched = {f for p in (*topic.patches, *topic.upstream_only) for f in p.files()}
        assert set(changed) == patched | set(topic.own_files)
        for rel in topic.own_files:
            assert git(upstream_repo, 'show', f'{branch.branch}:{rel}') == (fork_copy / rel).read_text(), rel
    assert made[2].base_commit == made[4].base_commit == main  # atomic-checkpoints, autoresume-fallback stand alone
    assert made[3].base_commit == git(upstream_repo, 'rev-parse', made[0].branch).strip()  # stacks on lifecycle
    assert 'docs/source/notes/signal_handling.rst' in git(
        upstream_repo,
        'diff',
        '--name-only',
        'main',
        'signals/lifecycle',
    ).split()


def test_one_topic_builds_the_topics_it_stacks_on_and_reuses_existing_branches(upstream_repo, fork_copy):
    made = pr.make_topic_branches(upstream_repo, topic='lifecycle', root=fork_copy)
    assert [(b.branch, b.created) for b in made] == [('signals/lifecycle', True)]
    git(upstream_repo, 'checkout', '-q', 'main')
    made = pr.make_topic_branches(upstream_repo, topic='preemption', root=fork_copy)
    assert [(b.branch, b.created) for b in made] == [('signals/lifecycle', False), ('signals/preemption', True)]
    made = pr.make_topic_branches(upstream_repo, topic='atomic-checkpoints', root=fork_copy)
    assert [(b.branch, b.created) for b in made] == [('signals/atomic-checkpoints', True)]
    with pytest.raises(series.ForkError, match='already has a branch signals/preemption'):
        pr.make_topic_branches(upstream_repo, topic='preemption', root=fork_copy)
    with pytest.raises(series.ForkError, match='no topic'):
        pr.make_topic_branches(upstream_repo, topic='nope', root=fork_copy)


def test_a_checkout_where_upstream_moved_on_names_the_patch_that_no_longer_applies(upstream_repo, fork_copy):
    engine = upstream_repo / 'composer' / 'core' / 'engine.py'
    engine.write_text(engine.read_text().replace('import signal', 'import signal  # moved'))
    git(upstream_repo, 'commit', '-qam', 'upstream moved on')
    problems, _ = pr.check_against_checkout(upstream_repo, root=fork_copy, commits=False)
    assert len(problems) == 1 and '0001-Do-not-install-signal-handlers' in problems[0], problems


def test_every_commit_check_names_a_commit_that_does_not_import(upstream_repo, fork_copy):
    # A topic whose module has a syntax error at its first commit, and a test file that imports a missing module.
    topic = topics.read_topics(fork_copy / 'patches', fork_copy)[0]
    env = {**os.environ, **series._GIT_ENV}
    git(upstream_repo, 'checkout', '-q', '-b', 'broken')
    (upstream_repo / 'composer/utils/signal_handling.py').write_text('def broken(:\n')
    git(upstream_repo, 'add', '-A')
    subprocess.run(['git', 'commit', '-qm', 'Add a broken module'], cwd=upstream_repo, check=True, env=env)
    (upstream_repo / 'composer/utils/signal_handling.py').write_text('"""Fine now."""\n')
    (upstream_repo / 'tests/signal_handling').mkdir(parents=True)
    (upstream_repo / 'tests/signal_handling/test_import.py').write_text('import composer.utils.nowhere\n')
    git(upstream_repo, 'add', '-A')
    subprocess.run(['git', 'commit', '-qm', 'Add a test that cannot import'], cwd=upstream_repo, check=True, env=env)
    problems, notes = pr.check_every_commit(upstream_repo, {topic.name: ('main', 'broken')}, [topic], fork_copy)
    assert len(problems) == 2, problems
    assert 'Add a broken module' in problems[0] and 'does not compile' in problems[0]
    assert 'Add a test that cannot import' in problems[1] and 'composer.utils.nowhere' in problems[1]
    assert notes == ['lifecycle: 2 commits from main, each compiles, imports and collects its tests']


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
    assert sorted(p.stem for p in out.glob('*.md')) == sorted(t.name for t in topics.read_topics())
    text = (out / 'lifecycle.md').read_text()
    for heading in ('# What does this PR do?', '# What issue(s) does this change relate to?', '# Before submitting'):
        assert heading in text, heading
    assert '{{' not in text
    assert 'issues/3151' in text
    assert 'Add composer.utils.signal_handling' in text  # the commit list of the branch
