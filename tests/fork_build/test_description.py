"""Pull-request descriptions: the templates in patches/pr, their check, and the evidence filled into them."""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forktool import ForkError, description
from tests.fork_build.conftest import ROOT

GIT_ENV = {
    'GIT_AUTHOR_NAME': 'Test',
    'GIT_AUTHOR_EMAIL': 'test@example.com',
    'GIT_COMMITTER_NAME': 'Test',
    'GIT_COMMITTER_EMAIL': 'test@example.com',
}


@dataclass(frozen=True)
class FakePatch:
    name: str
    subject: str
    changed: tuple[str, ...] = ()
    fields: dict = field(default_factory=dict)

    def files(self) -> list[str]:
        return list(self.changed)


@dataclass(frozen=True)
class FakeTopic:
    name: str
    patches: tuple[FakePatch, ...]
    upstream_only: tuple[FakePatch, ...] = ()
    own_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class FakeBranch:
    topic: FakeTopic
    branch: str
    base: str
    base_commit: str
    created: bool
    upstream_commit: str


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(['git', *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '-m', message)
    return git(repo, 'rev-parse', 'HEAD')


@pytest.fixture
def upstream(tmp_path) -> Path:
    """A tiny upstream: ``mod.py`` with a bug on ``main``; branch ``signals/fix`` fixes it and adds a test."""
    repo = tmp_path / 'upstream'
    repo.mkdir()
    git(repo, 'init', '-q', '-b', 'main')
    commit(repo, {'mod.py': 'def answer():\n    return 41\n', 'tests/test_up.py': UPSTREAM_TEST}, 'Upstream release')
    git(repo, 'checkout', '-q', '-b', 'signals/fix')
    commit(repo, {'mod.py': 'def answer():\n    return 42\n'}, 'Return the right answer')
    commit(repo, {'tests/fix/test_fix.py': 'import mod\n\ndef test_answer():\n    assert mod.answer() == 42\n'},
           'Add the regression test')  # yapf: disable
    return repo


UPSTREAM_TEST = """
import os

def test_environment():
    assert os.environ.get('NO_SUCH_VARIABLE_IS_SET')  # fails everywhere: not this PR's fault

def test_unchanged():
    import mod
    assert mod.answer() in (41, 42)
"""


def topic_branch(upstream: Path, name: str = 'fix') -> FakeBranch:
    topic = FakeTopic(
        name=name,
        patches=(FakePatch('0001-right-answer.patch', 'Return the right answer', ('mod.py',)),),
        own_files=('tests/fix/test_fix.py',),
    )
    main = git(upstream, 'rev-parse', 'main')
    return FakeBranch(topic, 'signals/fix', main, main, True, main)


def fork_root(tmp_path: Path, template: str, name: str = 'fix') -> Path:
    root = tmp_path / 'fork'
    (root / 'patches' / 'pr').mkdir(parents=True)
    (root / 'patches' / 'topics').write_text(f'[{name}]\n0001-right-answer.patch\n')
    (root / 'patches' / 'pr' / f'{name}.md').write_text(template)
    (root / 'bench' / 'results').mkdir(parents=True)
    (root / 'bench' / 'results' / 'latest.md').write_text('| metric | upstream | fork |\n| --- | --- | --- |\n')
    return root


def test_every_topic_has_a_template_and_every_template_passes_the_check():
    assert description.check_templates(ROOT / 'patches') == []


def test_check_templates_names_an_unknown_placeholder_a_missing_template_and_a_stray_one(tmp_path):
    patches = tmp_path / 'patches'
    shutil.copytree(ROOT / 'patches' / 'pr', patches / 'pr')
    shutil.copy(ROOT / 'patches' / 'topics', patches / 'topics')
    lifecycle = patches / 'pr' / 'lifecycle.md'
    lifecycle.write_text(lifecycle.read_text().replace('{{ lint }}', '{{ reviewers }}'))
    (patches / 'pr' / 'preemption.md').unlink()
    (patches / 'pr' / 'extra.md').write_text('{{ commits }}')
    problems = description.check_templates(patches)
    assert 'pr/lifecycle.md: unknown placeholder {{ reviewers }}' in problems
    assert 'pr/lifecycle.md: lacks {{ lint }}' in problems
    assert 'pr/preemption.md: missing (topic preemption)' in problems
    assert 'pr/extra.md: no topic extra in patches/topics' in problems
    assert not [p for p in problems if p.startswith('pr/atomic-checkpoints.md')]


def test_fill_replaces_every_placeholder_and_refuses_one_without_a_value():
    assert description.fill('a {{ commits }} b {{commits}}', {'commits': '- x\n'}) == 'a - x b - x'
    with pytest.raises(ForkError, match='no value for the placeholder.*tests'):
        description.fill('{{ commits }} {{ tests }}', {'commits': ''})


def test_commit_list_is_base_to_branch_oldest_first(upstream):
    lines = description.commit_list(upstream, 'main', 'signals/fix').splitlines()
    assert [line.split(' ', 2)[2] for line in lines] == ['Return the right answer', 'Add the regression test']
    assert lines[0].startswith('- `') and git(upstream, 'rev-parse', 'signals/fix~1').startswith(lines[0][3:10])


@pytest.mark.parametrize(
    'name',
    ['lifecycle', 'preemption', 'atomic-checkpoints', 'launcher-cleanup-timeout', 'autoresume-fallback'],
)
def test_each_real_template_is_filled_completely_without_evidence(upstream, tmp_path, name):
    template = (ROOT / 'patches' / 'pr' / f'{name}.md').read_text()
    root = fork_root(tmp_path, template, name)
    branch = topic_branch(upstream, name)
    text = description.write_description(branch, upstream, tmp_path / 'out', evidence=False, root=root).read_text()
    assert '{{' not in text and '}}' not in text
    for heading in ('# What does this PR do?', '# What issue(s) does this change relate to?', '# Before submitting'):
        assert heading in text
    assert 'Return the right answer' in text and 'Evidence was not collected' in text
    assert '- [ ] Did you run the tests locally' in text and '- [ ] Did you run `pre-commit`' in text
    assert f'starts from upstream `{branch.upstream_commit[:7]}' in text


def test_a_stacked_branch_says_what_to_merge_first(upstream, tmp_path):
    root = fork_root(tmp_path, '{{ base }}|{{ commits }}|{{ tests }}{{ tests_box }}{{ lint }}{{ lint_box }}')
    first = topic_branch(upstream)
    stacked = FakeBranch(first.topic, 'signals/fix', 'signals/prev', git(upstream, 'rev-parse', 'signals/fix~1'), True,
                         first.upstream_commit)  # yapf: disable
    base, commits, _ = description.write_description(stacked, upstream, tmp_path, False, root).read_text().split('|')
    assert 'stacks on `signals/prev`' in base and '`signals/prev..signals/fix`' in base
    assert commits.count('\n') == 0 and 'Add the regression test' in commits


@pytest.mark.parametrize('hook_findings', [[], ['ruff:\nmod.py:1:1: E999 broken']])
def test_evidence_runs_the_topic_tests_on_the_branch_and_on_its_base(upstream, tmp_path, monkeypatch, hook_findings):
    calls = []
    monkeypatch.setattr(description.lint, 'lint_upstream', lambda *args: calls.append(args) or hook_findings)
    monkeypatch.setattr(description, 'UPSTREAM_TESTS', {'mod.py': ['tests/test_up.py']})
    template = '{{ base }}\n{{ commits }}\n{{ tests }}\n[{{ tests_box }}] tests\n{{ lint }}\n[{{ lint_box }}] lint\n'
    branch = topic_branch(upstream)
    text = description.write_description(branch, upstream, tmp_path / 'out', root=fork_root(tmp_path, template))
    text = text.read_text()
    rows = [line for line in text.splitlines() if line.startswith('| this PR') or line.startswith('| upstream')]
    # passed | failed | errors | skipped: the new test passes on the branch and fails on the base (41 != 42)
    assert rows[0].startswith('| this PR\'s tests | `signals/fix` | 1 | 0 | 0 | 0 |')
    assert rows[1].startswith(f'| this PR\'s tests | base `{branch.base_commit[:9]}` | 0 | 1 | 0 | 0 |')
    # upstream's test_environment fails on both: it does not count against the branch
    assert rows[2].startswith('| upstream\'s tests of the changed modules | `signals/fix` | 1 | 1 | 0 | 0 |')
    assert rows[3].startswith('| upstream\'s tests of the changed modules | base')
    assert 'fails on the branch' not in text and '[x] tests' in text
    assert calls[0][1] == branch.base_commit and calls[0][0].name == 'branch'  # lint ran in the branch's worktree
    assert ('[ ] lint' in text and 'E999 broken' in text) if hook_findings else ('[x] lint' in text)
    assert not git(upstream, 'worktree', 'list').count('\n')  # the worktrees are gone


def test_a_topic_test_failing_on_the_branch_unticks_the_box_and_is_named(upstream, tmp_path, monkeypatch):
    monkeypatch.setattr(description.lint, 'lint_upstream', lambda *args: [])
    commit(upstream, {'mod.py': 'def answer():\n    return 43\n'}, 'Break it again')
    template = '{{ base }}{{ commits }}\n{{ tests }}\n[{{ tests_box }}] tests\n{{ lint }}[{{ lint_box }}]\n'
    path = description.write_description(topic_branch(upstream), upstream, tmp_path, root=fork_root(tmp_path, template))
    text = path.read_text()
    assert '[ ] tests' in text
    assert '  - fails on the branch: `tests.fix.test_fix::test_answer` assert 43 == 42' in text


def test_parse_junit_counts_outcomes_and_keeps_the_first_line_of_each_failure(tmp_path):
    report = tmp_path / 'junit.xml'
    report.write_text(
        '<testsuites><testsuite tests="4">'
        '<testcase classname="t.a" name="ok"/>'
        '<testcase classname="t.a" name="bad"><failure message="assert `x`&#10;more"/></testcase>'
        '<testcase classname="t.b" name="broken"><error message="collection"/></testcase>'
        '<testcase classname="t.b" name="later"><skipped message="no ray"/></testcase>'
        '</testsuite></testsuites>',
    )
    counts, failed = description.parse_junit(report)
    assert counts == {'passed': 1, 'failure': 1, 'error': 1, 'skipped': 1}
    assert failed == {'t.a::bad': "assert 'x'", 't.b::broken': 'collection'}
