"""Upstream pull requests: one branch per topic in an upstream checkout, and the check of the series against one.

Topic k's branch starts from topic k-1's (the first from the checkout's ``HEAD``) and holds one commit per patch
(subject and DEP-3 header as the message), one commit that brings ``composer/`` and ``tests/`` to the topic's state,
and one commit per PR-only (``patches/upstream-only/``) patch of the topic. Nothing fork-only lands in a branch:
:data:`FORK_ONLY_PATHS` is checked on every branch's diff.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import _GIT_ENV, _commit_message, _git, apply_patch
from forktool.topics import Topic, overlay_states, read_topics, state_files
from forktool.upstream import ROOT

#: Paths of this repository that serve the fork only; none of them may appear in a pull-request branch's diff.
FORK_ONLY_PATHS = (
    'tests/requirements.txt',
    'tests/fork_build/',
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


@dataclass(frozen=True)
class TopicBranch:
    """A topic's branch in the upstream checkout, and the commit it starts from (the previous topic's branch)."""

    topic: Topic
    branch: str
    base: str  # the branch or commit it starts from, as given to git
    base_commit: str
    created: bool
    upstream_commit: str  # the upstream commit the first topic's branch starts from


def overlay_commit_subject(topic: Topic, first: bool) -> str:
    if first:
        return 'Add composer.utils.signal_handling and its regression tests'
    return f'{topic.name}: update composer.utils.signal_handling and its regression tests'


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


def _sync_state(upstream: Path, state: Path, previous: Optional[Path]) -> list[str]:
    """Make the fork's files in ``upstream`` those of ``state``: copy its files, delete the previous state's others."""
    files = state_files(state)
    wanted = {rel for _, rel in files}
    changed = []
    if previous is not None:
        for _, rel in state_files(previous):
            if rel not in wanted:
                (upstream / rel).unlink()
                changed.append(rel)
    for src, rel in files:
        target = upstream / rel
        if previous is None and target.exists():
            raise ForkError(f'{rel} exists upstream: change upstream files through patches/, not the overlay.')
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != src.read_bytes():
            shutil.copyfile(src, target)
            changed.append(rel)
    return changed


def make_topic_branches(
    upstream: Path,
    topic: Optional[str] = None,
    prefix: str = DEFAULT_PREFIX,
    root: Path = ROOT,
) -> list[TopicBranch]:
    """Create ``<prefix>/<topic>`` for ``topic`` (and the earlier topics it stacks on) or for every topic.

    An earlier topic's branch that already exists is reused as the base; the requested ones must not exist yet.
    The checkout is left on the last branch created.
    """
    _require_clean(upstream)
    topics = read_topics(root / 'patches')
    names = [t.name for t in topics]
    if topic is not None and topic not in names:
        raise ForkError(f'no topic {topic!r}; the topics are: {", ".join(names)} (patches/topics).')
    wanted = names if topic is None else [topic]
    upto = names.index(wanted[-1]) + 1
    for name in wanted:
        if _branch_exists(upstream, f'{prefix}/{name}'):
            raise ForkError(
                f'{upstream} already has a branch {prefix}/{name}; delete it or pass BRANCH=<another prefix>.',
            )
    # Identity comes from the checkout's own git config when it has one.
    identity = {k: v for k, v in _GIT_ENV.items() if 'DATE' not in k}
    if _git(['config', 'user.email'], cwd=upstream, check=False).stdout.strip():
        identity = {}
    made: list[TopicBranch] = []
    base = _git(['rev-parse', 'HEAD'], cwd=upstream).stdout.strip()
    first = f'{prefix}/{topics[0].name}'
    upstream_commit = base
    if topics[0].name not in wanted and _branch_exists(upstream, first):
        own = len(topics[0].patches) + 1 + len(topics[0].upstream_only)  # its patches, overlay, PR-only commits
        upstream_commit = _git(['rev-parse', f'{first}~{own}'], cwd=upstream).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        states = overlay_states(Path(tmp) / 'states', topics, root)
        previous_state: Optional[Path] = None
        for t in topics[:upto]:
            branch = f'{prefix}/{t.name}'
            base_commit = _git(['rev-parse', base], cwd=upstream).stdout.strip()
            if t.name not in wanted and _branch_exists(upstream, branch):
                made.append(TopicBranch(t, branch, base, base_commit, False, upstream_commit))
            else:
                _git(['checkout', '-q', '-b', branch, base], cwd=upstream, env=identity)
                _build_topic(upstream, t, states[t.name], previous_state, identity)
                made.append(TopicBranch(t, branch, base, base_commit, True, upstream_commit))
                leaked = fork_only(_git(['diff', '--name-only', base_commit, branch], cwd=upstream).stdout.split())
                if leaked:
                    raise ForkError(f'{branch} would carry fork-only files: {", ".join(leaked)}')
            previous_state = states[t.name]
            base = branch
    return made


def _build_topic(upstream: Path, topic: Topic, state: Path, previous: Optional[Path], identity: dict) -> None:

    def commit(message: str) -> None:
        _git(['commit', '-q', '--cleanup=verbatim', '-F', '-'], cwd=upstream, env=identity, stdin=message)

    for patch in topic.patches:
        apply_patch(patch, upstream, index=True)
        commit(_commit_message(patch))
    changed = _sync_state(upstream, state, previous)
    if changed:
        _git(['add', '-A', '--', *changed], cwd=upstream)
        commit(overlay_commit_subject(topic, first=previous is None) + '\n')
    for patch in topic.upstream_only:
        apply_patch(patch, upstream, index=True)
        commit(_commit_message(patch))


def check_against_checkout(upstream: Path, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """Apply every topic (series patches, overlay state, PR-only patches) to a copy of an upstream checkout.

    Returns:
        tuple[list[str], list[str]]: The problems (a patch that does not apply with exact context, an overlay file
        that exists upstream), and notes (hunks that applied at an offset: the checkout moved those lines).
    """
    problems: list[str] = []
    notes: list[str] = []
    if not (upstream / '.git').exists():
        return [f'{upstream} is not a git checkout of upstream Composer.'], notes
    topics = read_topics(root / 'patches')
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / 'checkout'
        copy.mkdir()
        # The committed tree at HEAD, not the work tree: what a branch made by `make pr` would start from.
        archive = Path(tmp) / 'head.tar'
        _git(['archive', '--format=tar', '-o', str(archive), 'HEAD'], cwd=upstream)
        shutil.unpack_archive(str(archive), str(copy))
        _git(['init', '-q'], cwd=copy)
        states = overlay_states(Path(tmp) / 'states', topics, root)
        previous: Optional[Path] = None
        for topic in topics:
            for patch in (*topic.patches, *topic.upstream_only):
                result = _git(['apply', '--verbose', '--whitespace=nowarn', '-'],
                              cwd=copy,
                              check=False,
                              stdin=patch.diff)
                if result.returncode != 0:
                    problems.append(f'{topic.name}: {patch.name} does not apply:\n{result.stderr.strip()}')
                    continue
                for line in result.stderr.splitlines():
                    if 'offset' in line:
                        notes.append(f'{topic.name}: {patch.name}: {line.strip()}')
            try:
                _sync_state(copy, states[topic.name], previous)
            except ForkError as e:
                problems.append(f'{topic.name}: {e}')
            previous = states[topic.name]
    return problems, notes
