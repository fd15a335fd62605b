"""Upstream pull requests: one branch per topic in an upstream checkout, and every commit of every branch checked.

A topic's branch starts from its base (``upstream``: the checkout's ``HEAD``; otherwise the base topic's branch) and
holds what :meth:`.Topic.commit_into` commits (its modules, one commit per patch with ``git am``, its tests), then one
commit per PR-only patch of the topic (``git am`` too). Nothing fork-only lands in a branch: :data:`FORK_ONLY_PATHS`
is checked on every branch's diff. :func:`check_every_commit` checks out each commit of each branch and checks that
it builds (compiles, imports) and that its tests import (pytest collects them).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import _GIT_ENV, TOPIC_BRANCH_PREFIX, UPSTREAM_TAG, _git, am, make_tree
from forktool.topics import UPSTREAM_BASE, Topic, read_topics
from forktool.upstream import ROOT

#: Paths of this repository that serve the fork only; none of them may appear in a pull-request branch's diff.
FORK_ONLY_PATHS = (
    'tests/requirements.txt',
    'tests/fork_build/',
    'tests/production/',
    'forktool/',
    'bench/',
    'demo/',
    'docker/',
    'patches/',
    'setup.py',
    'Makefile',
    'README.md',
    'CHANGELOG.md',
    'upstream.cfg',
)
DEFAULT_PREFIX = 'signals'
#: What every commit must import: Composer, the modules that the series patches, and the topics' new modules.
IMPORTED_MODULES = ('composer', 'composer.core.engine', 'composer.trainer.trainer', 'composer.cli.launcher')


@dataclass(frozen=True)
class TopicBranch:
    """A topic's branch in the upstream checkout, and the commit it starts from."""

    topic: Topic
    branch: str
    base: str  # the branch or commit it starts from, as given to git
    base_commit: str
    created: bool
    upstream_commit: str  # the upstream commit the series starts from


def fork_only(paths: list[str]) -> list[str]:
    """The paths among ``paths`` that are fork-only (see :data:`FORK_ONLY_PATHS`)."""
    return [p for p in paths if any(p == f or (f.endswith('/') and p.startswith(f)) for f in FORK_ONLY_PATHS)]


def _require_clean(upstream: Path) -> None:
    if not (upstream / '.git').exists():
        raise ForkError(f'{upstream} is not a git checkout of upstream Composer.')
    status = _git(['status', '--porcelain'], cwd=upstream).stdout
    if status.strip():
        raise ForkError(
            f'{upstream} has uncommitted changes; refusing to touch it. Commit or stash them first:\n'
            f'{status.rstrip()}',
        )


def _branch_exists(upstream: Path, branch: str) -> bool:
    return _git(['rev-parse', '--verify', '--quiet', f'refs/heads/{branch}'], cwd=upstream, check=False).returncode == 0


def make_topic_branches(
    upstream: Path,
    topic: Optional[str] = None,
    prefix: str = DEFAULT_PREFIX,
    root: Path = ROOT,
) -> list[TopicBranch]:
    """Create ``<prefix>/<topic>`` for ``topic`` (and the topics it stacks on) or for every topic.

    A base topic's branch that already exists is reused; the requested ones must not exist yet. The checkout is left
    on the last branch created.
    """
    _require_clean(upstream)
    topics = read_topics(root / 'patches', root)
    by_name = {t.name: t for t in topics}
    if topic is not None and topic not in by_name:
        raise ForkError(f'no topic {topic!r}; the topics are: {", ".join(by_name)} (patches/topics).')
    wanted = list(by_name) if topic is None else [topic]
    for name in wanted:
        if _branch_exists(upstream, f'{prefix}/{name}'):
            raise ForkError(
                f'{upstream} already has a branch {prefix}/{name}; delete it or pass BRANCH=<another prefix>.',
            )
    needed: list[str] = []  # the wanted topics and, first, the topics they stack on
    for name in wanted:
        chain = [name]
        while by_name[chain[-1]].base != UPSTREAM_BASE:
            chain.append(by_name[chain[-1]].base)
        needed += [n for n in reversed(chain) if n not in needed]
    # Identity comes from the checkout's own git config when it has one.
    identity = {k: v for k, v in _GIT_ENV.items() if 'DATE' not in k}
    if _git(['config', 'user.email'], cwd=upstream, check=False).stdout.strip():
        identity = {}
    upstream_commit = _git(['rev-parse', 'HEAD'], cwd=upstream).stdout.strip()
    made: list[TopicBranch] = []
    for name in needed:
        t = by_name[name]
        branch = f'{prefix}/{name}'
        base = upstream_commit if t.base == UPSTREAM_BASE else f'{prefix}/{t.base}'
        base_commit = _git(['rev-parse', base], cwd=upstream).stdout.strip()
        if name not in wanted and _branch_exists(upstream, branch):
            made.append(TopicBranch(t, branch, base, base_commit, False, upstream_commit))
            continue
        _git(['checkout', '-q', '-b', branch, base], cwd=upstream, env=identity)
        t.commit_into(upstream, root, env=identity)
        am(t.upstream_only, upstream, env=identity)
        leaked = fork_only(_git(['diff', '--name-only', base_commit, branch], cwd=upstream).stdout.split())
        if leaked:
            raise ForkError(f'{branch} would carry fork-only files: {", ".join(leaked)}')
        made.append(TopicBranch(t, branch, base, base_commit, True, upstream_commit))
    return made


def check_against_checkout(upstream: Path, root: Path = ROOT, commits: bool = True) -> tuple[list[str], list[str]]:
    """Make every topic's branch in a clone of an upstream checkout and check every commit of them.

    Returns:
        tuple[list[str], list[str]]: The problems, and notes (what was checked).
    """
    if not (upstream / '.git').exists():
        return [f'{upstream} is not a git checkout of upstream Composer.'], []
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / 'checkout'
        _git(['clone', '-q', '--no-hardlinks', str(upstream), str(clone)], cwd=Path(tmp))
        try:
            branches = make_topic_branches(clone, prefix='check', root=root)
        except ForkError as e:
            return [str(e)], []
        if not commits:
            return [], [f'{b.branch}: made on {b.base_commit[:12]}' for b in branches]
        ranges = {b.topic.name: (b.base_commit, b.branch) for b in branches}
        return check_every_commit(clone, ranges, [b.topic for b in branches], root)


def check_tree_commits(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """Every commit of every topic branch, as made from the release (``make tree``), builds and its tests import.

    The tree is linear; a topic whose base is not the topic before it (``atomic-checkpoints`` starts from upstream)
    is cherry-picked onto its base first, as its pull request would be.
    """
    topics = read_topics(root / 'patches', root)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / 'tree'
        make_tree(tree, root=root)
        ranges: dict[str, tuple[str, str]] = {}
        previous = UPSTREAM_TAG
        for t in topics:
            end = TOPIC_BRANCH_PREFIX + t.name
            base = UPSTREAM_TAG if t.base == UPSTREAM_BASE else TOPIC_BRANCH_PREFIX + t.base
            if base != previous:
                revs = _git(['rev-list', '--reverse', f'{previous}..{end}'], cwd=tree).stdout.split()
                branch = f'check/{t.name}'
                _git(['checkout', '-q', '-b', branch, base], cwd=tree)
                _git(['cherry-pick', '--allow-empty', *revs], cwd=tree, env=_GIT_ENV)
                ranges[t.name] = (base, branch)
            else:
                ranges[t.name] = (previous, end)
            previous = end
        return check_every_commit(tree, ranges, topics, root)


def check_every_commit(repo: Path, ranges: dict[str, tuple[str, str]], topics: list[Topic],
                       root: Path) -> tuple[list[str], list[str]]:
    """Check each commit of each topic's ``(base, branch)`` range, in a worktree of its own, two at a time."""
    modules = [m[:-3].replace('/', '.') for t in topics for m in t.modules if m.endswith('.py')]
    tests = [p for t in topics for p in t.tests if Path(p).name.startswith('test_')]
    jobs: list[tuple[str, str]] = []
    notes: list[str] = []
    for t in topics:
        base, branch = ranges[t.name]
        revs = _git(['rev-list', '--reverse', f'{base}..{branch}'], cwd=repo).stdout.split()
        jobs += [(t.name, rev) for rev in revs]
        notes.append(f'{t.name}: {len(revs)} commits from {base}, each compiles, imports and collects its tests')

    git_lock = threading.Lock()

    def check(job: tuple[str, str], worktrees: Path) -> Optional[str]:
        name, rev = job
        checkout = worktrees / rev
        with git_lock:  # git worktree add/remove update the repository's administrative files
            _git(['worktree', 'add', '-q', '--detach', str(checkout), rev], cwd=repo)
        try:
            subject = _git(['log', '-1', '--format=%s', rev], cwd=repo).stdout.strip()
            changed = _git(['diff-tree', '--no-commit-id', '--name-only', '-r', rev], cwd=repo).stdout.split()
            present_modules = [m for m in modules if (checkout / (m.replace('.', '/') + '.py')).is_file()]
            present_tests = [p for p in tests if (checkout / p).is_file()]
            problem = _check_checkout(
                checkout,
                [p for p in changed if p.endswith('.py')],
                present_modules,
                present_tests,
            )
            return f'{name}: commit {rev[:12]} ({subject}) {problem}' if problem else None
        finally:
            with git_lock:
                _git(['worktree', 'remove', '--force', str(checkout)], cwd=repo, check=False)

    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: check(job, Path(tmp)), jobs))
    return [r for r in results if r], notes


def _check_checkout(repo: Path, changed: list[str], modules: list[str], tests: list[str]) -> Optional[str]:
    """``None`` when the commit checked out in ``repo`` compiles, imports and collects ``tests``; else what failed."""
    present = [p for p in changed if (repo / p).is_file()]
    if present:
        compiled = subprocess.run([sys.executable, '-m', 'py_compile', *present],
                                  cwd=repo,
                                  capture_output=True,
                                  text=True,
                                  stdin=subprocess.DEVNULL)
        if compiled.returncode != 0:
            return f'does not compile:\n{compiled.stdout}{compiled.stderr}'
    script = (
        'import importlib, sys\n'
        'for name in sys.argv[1].split():\n'
        '    importlib.import_module(name)\n'
        'if len(sys.argv) > 2:\n'
        '    import pytest\n'
        "    sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-c', '/dev/null', "
        "'--rootdir', '.', *sys.argv[2:]]))\n"
    )
    env = {'PYTHONPATH': str(repo), 'PATH': '/usr/bin:/bin', 'HOME': str(Path.home())}
    result = subprocess.run([sys.executable, '-c', script, ' '.join([*IMPORTED_MODULES, *modules]), *tests],
                            cwd=repo,
                            capture_output=True,
                            text=True,
                            env=env,
                            timeout=600)
    if result.returncode != 0:
        tail = '\n'.join((result.stdout + result.stderr).strip().splitlines()[-15:])
        return f'does not import, or its tests do not (exit {result.returncode}):\n{tail}'
    return None
