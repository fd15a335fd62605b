"""The series in topics: one upstream pull request per topic, each branch stacked on the previous topic's.

``patches/topics`` groups the patches of ``patches/series`` into named topics (``[name]`` followed by patch names).
The fork's own files (``composer/`` and the upstream-bound ``tests/``) hold the state after the last topic;
``patches/overlay/<topic>.patch`` is the change one topic makes to them after the previous one. Reverse-applying the
later topics' overlay patches to the final state gives an earlier topic's state (:func:`overlay_states`).

PR-only changes (upstream's docs) live in ``patches/upstream-only/``: a ``series`` file and DEP-3 patches against
upstream's git layout, each with a ``Topic:`` field; they are applied to pull-request branches only, never to the
wheel.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import _GIT_ENV, DIFF_ARGS, PATCHES_DIR, Patch, _git, check_headers, overlay_files, read_series
from forktool.upstream import ROOT

TOPICS_FILE = 'topics'
OVERLAY_DIR = 'overlay'
UPSTREAM_ONLY_DIR = 'upstream-only'
_NAME = re.compile(r'[a-z0-9]+(?:-[a-z0-9]+)*')


@dataclass(frozen=True)
class Topic:
    """One topic: its name, its patches (in series order) and its upstream-only (PR-only) patches."""

    name: str
    patches: tuple[Patch, ...]
    upstream_only: tuple[Patch, ...] = ()

    def overlay_patch(self, patches_dir: Path = PATCHES_DIR) -> Path:
        """Where this topic's change to the fork's own files is stored (absent for the first topic)."""
        return patches_dir / OVERLAY_DIR / f'{self.name}.patch'

    def files(self) -> list[str]:
        """The upstream files that this topic's patches change."""
        return list(dict.fromkeys(f for p in self.patches for f in p.files()))


def read_topic_names(patches_dir: Path = PATCHES_DIR) -> list[tuple[str, list[str]]]:
    """``patches/topics`` as a list of (topic name, patch names), in file order."""
    path = patches_dir / TOPICS_FILE
    if not path.is_file():
        raise ForkError(f'{path} is missing: it groups patches/series into topics ([name], then patch names).')
    topics: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('[') and line.endswith(']'):
            name = line[1:-1].strip()
            if not _NAME.fullmatch(name):
                raise ForkError(f'{path}:{number}: topic name {name!r} must be lower-case words joined by `-`.')
            topics.append((name, []))
        elif not topics:
            raise ForkError(f'{path}:{number}: {line} comes before the first [topic] line.')
        else:
            topics[-1][1].append(line)
    return topics


def read_upstream_only(patches_dir: Path = PATCHES_DIR) -> list[Patch]:
    """The PR-only patches (``patches/upstream-only/series``), or none when the directory does not exist."""
    directory = patches_dir / UPSTREAM_ONLY_DIR
    if not directory.is_dir():
        return []
    return read_series(directory)


def read_topics(patches_dir: Path = PATCHES_DIR) -> list[Topic]:
    """The topics, with their patches; raise a :class:`ForkError` when ``check_topics`` would find a problem."""
    problems = check_topics(patches_dir)
    if problems:
        raise ForkError('; '.join(problems))
    by_name = {p.name: p for p in read_series(patches_dir)}
    extra = read_upstream_only(patches_dir)
    return [
        Topic(
            name=name,
            patches=tuple(by_name[n] for n in names),
            upstream_only=tuple(p for p in extra if p.fields.get('Topic') == name),
        ) for name, names in read_topic_names(patches_dir)
    ]


def check_topics(patches_dir: Path = PATCHES_DIR) -> list[str]:
    """Every patch of the series in exactly one topic, topics in series order; overlay and PR-only patches named."""
    problems = []
    topics = read_topic_names(patches_dir)
    series_names = [p.name for p in read_series(patches_dir)]
    names = [name for name, _ in topics]
    if len(set(names)) != len(names):
        problems.append(f'{TOPICS_FILE}: a topic name appears twice ({", ".join(names)})')
    listed = [patch for _, patches in topics for patch in patches]
    for patch in sorted(set(series_names) - set(listed)):
        problems.append(f'{TOPICS_FILE}: {patch} belongs to no topic')
    for patch in sorted(set(listed) - set(series_names)):
        problems.append(f'{TOPICS_FILE}: {patch} is not in patches/series')
    for patch in sorted({p for p in listed if listed.count(p) > 1}):
        problems.append(f'{TOPICS_FILE}: {patch} belongs to more than one topic')
    if not problems and listed != series_names:
        problems.append(f'{TOPICS_FILE}: the topics list the patches in another order than patches/series')
    overlay_dir = patches_dir / OVERLAY_DIR
    if topics and (overlay_dir / f'{names[0]}.patch').exists():
        problems.append(f'{OVERLAY_DIR}/{names[0]}.patch: the first topic has no overlay patch (it is the base state)')
    if overlay_dir.is_dir():
        for path in sorted(overlay_dir.glob('*.patch')):
            if path.stem not in names:
                problems.append(f'{OVERLAY_DIR}/{path.name}: no topic of that name')
    extra = read_upstream_only(patches_dir)
    problems += [f'{UPSTREAM_ONLY_DIR}/{p}' for p in check_headers(extra)]
    for patch in extra:
        if patch.fields.get('Topic') not in names:
            problems.append(
                f'{UPSTREAM_ONLY_DIR}/{patch.name}: its Topic field must name a topic of {TOPICS_FILE} '
                f'({", ".join(names)}), not {patch.fields.get("Topic")!r}',
            )
    # PR-only patches apply topic by topic: their series order must follow the topics' order.
    order = [names.index(p.fields['Topic']) for p in extra if p.fields.get('Topic') in names]
    if order != sorted(order):
        problems.append(f'{UPSTREAM_ONLY_DIR}/series: patches must be grouped in the order of the topics')
    return problems


def _copy_files(files: list[tuple[Path, str]], dest: Path) -> None:
    for src, rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)


def state_files(state: Path) -> list[tuple[Path, str]]:
    """The files of one materialized overlay state, as (source, path in upstream's layout)."""
    return [(p, p.relative_to(state).as_posix()) for p in sorted(state.rglob('*')) if p.is_file()]


def overlay_states(dest: Path, topics: Optional[list[Topic]] = None, root: Path = ROOT) -> dict[str, Path]:
    """Write every topic's state of the fork's own files into ``dest/<topic>``; return them by topic name.

    The last topic's state is the repository's ``composer/`` and upstream-bound ``tests/``; each earlier state is
    the next one with the next topic's overlay patch reverse-applied (``git apply -R``, exact context).
    """
    patches_dir = root / 'patches'
    topics = topics if topics is not None else read_topics(patches_dir)
    if dest.exists():
        shutil.rmtree(dest)
    states: dict[str, Path] = {}
    later: Optional[Topic] = None
    for topic in reversed(topics):
        state = dest / topic.name
        state.mkdir(parents=True)
        if later is None:
            _copy_files(overlay_files(root), state)
        else:
            _copy_files(state_files(states[later.name]), state)
            overlay = later.overlay_patch(patches_dir)
            if overlay.is_file():
                result = _git(['apply', '-R', '--whitespace=nowarn', str(overlay)], cwd=state, check=False)
                if result.returncode != 0:
                    raise ForkError(
                        f'patches/{OVERLAY_DIR}/{overlay.name} does not reverse-apply to the final state of '
                        f'composer/ and tests/:\n{result.stderr.strip()}\nRegenerate it: `python -m forktool '
                        'overlay-states`, edit, then `python -m forktool overlay-export`.',
                    )
        states[topic.name] = state
        later = topic
    return dict(reversed(list(states.items())))


def overlay_diff(before: Path, after: Path) -> str:
    """The diff from one state directory to the next, in upstream's layout (``a/composer/...``)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / 'states'
        repo.mkdir()
        _git(['init', '-q'], cwd=repo)
        _copy_files(state_files(before), repo)
        _git(['add', '-A'], cwd=repo)
        _git(['commit', '-q', '--allow-empty', '-m', 'before'], cwd=repo, env=_GIT_ENV)
        for path in list(repo.iterdir()):
            if path.name != '.git':
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        _copy_files(state_files(after), repo)
        _git(['add', '-A'], cwd=repo)
        diff = _git([*DIFF_ARGS, '--cached', 'HEAD'], cwd=repo).stdout
    return ''.join(line for line in diff.splitlines(keepends=True) if not line.startswith('index '))


def export_overlay_patches(states: Path, topics: Optional[list[Topic]] = None, root: Path = ROOT) -> list[Path]:
    """Regenerate ``patches/overlay/`` from edited states in ``states/<topic>`` (the last must be the final state)."""
    patches_dir = root / 'patches'
    topics = topics if topics is not None else read_topics(patches_dir)
    final = {rel: src.read_bytes() for src, rel in overlay_files(root)}
    last = {rel: src.read_bytes() for src, rel in state_files(states / topics[-1].name)}
    if final != last:
        raise ForkError(f'{states / topics[-1].name} differs from composer/ and tests/: copy the final state there.')
    written = []
    (patches_dir / OVERLAY_DIR).mkdir(exist_ok=True)
    for before, after in zip(topics, topics[1:]):
        path = after.overlay_patch(patches_dir)
        diff = overlay_diff(states / before.name, states / after.name)
        if diff:
            path.write_text(diff, encoding='utf-8')
            written.append(path)
        elif path.exists():
            path.unlink()
    return written


def check_overlay(root: Path = ROOT) -> list[str]:
    """The overlay patches reverse-apply exactly: regenerating them from the states they give reproduces them."""
    patches_dir = root / 'patches'
    try:
        topics = read_topics(patches_dir)
        with tempfile.TemporaryDirectory() as tmp:
            states = overlay_states(Path(tmp) / 'states', topics, root)
            problems = []
            for before, after in zip(topics, topics[1:]):
                path = after.overlay_patch(patches_dir)
                stored = path.read_text(encoding='utf-8') if path.is_file() else ''
                if overlay_diff(states[before.name], states[after.name]) != stored:
                    problems.append(
                        f'{OVERLAY_DIR}/{path.name}: does not reproduce exactly (stale context or line numbers); '
                        'run `python -m forktool overlay-states`, then `python -m forktool overlay-export`.',
                    )
            return problems
    except ForkError as e:
        return [str(e)]
