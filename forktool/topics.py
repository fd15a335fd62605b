"""The series in topics: one upstream pull request per topic, each made of its patches and its own new files.

``patches/topics`` (read with :mod:`configparser`) has one section per topic, in series order::

    [preemption]
    base = lifecycle                            # `upstream`, or an earlier topic its branch stacks on
    modules = composer/utils/preemption.py      # new files under composer/ that the topic adds
    tests = tests/signal_handling/test_preemption.py

``patches/series`` says which patches belong to which topic (``# topic: <name>`` lines). A topic's branch is: one
commit adding its modules, one commit per patch, one commit adding its tests, and one commit per PR-only patch of the
topic (``patches/upstream-only/``, with a ``Topic:`` field; upstream's docs and tests, which are not in the release).
The fork's own files are final in their topic: no later topic changes them.
"""

from __future__ import annotations

import ast
import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import (
    PATCHES_DIR,
    Patch,
    am,
    check_headers,
    commit_files,
    own_files,
    read_series,
    read_series_with_topics,
)
from forktool.upstream import ROOT

TOPICS_FILE = 'topics'
UPSTREAM_ONLY_DIR = 'upstream-only'
UPSTREAM_BASE = 'upstream'


@dataclass(frozen=True)
class Topic:
    """One topic: its name, what its branch starts from, its patches and its own files."""

    name: str
    base: str  # `upstream` or an earlier topic's name
    patches: tuple[Patch, ...]
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    upstream_only: tuple[Patch, ...] = ()

    @property
    def own_files(self) -> tuple[str, ...]:
        """The new files the topic adds (repository-relative): its modules, then its tests."""
        return self.modules + self.tests

    def upstream_files(self) -> list[str]:
        """The upstream files that this topic's patches change."""
        return list(dict.fromkeys(f for p in self.patches for f in p.files()))

    def modules_message(self, root: Path = ROOT) -> str:
        names = [m[:-len('.py')].replace('/', '.') if m.endswith('.py') else m for m in self.modules]
        body = [f'{name}: {_first_docstring_line(root / path)}' for name, path in zip(names, self.modules)]
        return f'Add {", ".join(names)}\n\n' + '\n'.join(body) + '\nThe commits that follow use it.\n'

    def tests_message(self) -> str:
        return f'Add the {self.name} tests\n\n' + '\n'.join(self.tests) + '\n'

    def commit_into(self, repo: Path, root: Path = ROOT, env: Optional[dict[str, str]] = None) -> None:
        """Add this topic to ``repo`` as its branch has it: modules, patches (``git am``), tests."""
        commit_files(repo, [(root / p, p) for p in self.modules], self.modules_message(root), env)
        am(self.patches, repo, env)
        commit_files(repo, [(root / p, p) for p in self.tests], self.tests_message(), env)


def _first_docstring_line(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding='utf-8'))) or ''
    return docstring.splitlines()[0] if docstring else '(no docstring)'


def _read_config(patches_dir: Path) -> configparser.ConfigParser:
    path = patches_dir / TOPICS_FILE
    if not path.is_file():
        raise ForkError(f'{path} is missing: it names each topic\'s base and own files ([name], base, modules, tests).')
    config = configparser.ConfigParser(inline_comment_prefixes=('#',), interpolation=None)
    config.read(path, encoding='utf-8')
    return config


def read_topic_files(patches_dir: Path = PATCHES_DIR) -> dict[str, list[str]]:
    """Every topic's own files, by topic name, in file order."""
    config = _read_config(patches_dir)
    return {
        name: config[name].get('modules', '').split() + config[name].get('tests', '').split()
        for name in config.sections()
    }


def read_upstream_only(patches_dir: Path = PATCHES_DIR) -> list[Patch]:
    """The PR-only patches (``patches/upstream-only/series``), or none when the directory does not exist."""
    directory = patches_dir / UPSTREAM_ONLY_DIR
    return read_series(directory) if directory.is_dir() else []


def read_topics(patches_dir: Path = PATCHES_DIR, root: Path = ROOT) -> list[Topic]:
    """The topics, with their patches; raise a :class:`ForkError` when :func:`check_topics` would find a problem."""
    problems = check_topics(patches_dir, root)
    if problems:
        raise ForkError('; '.join(problems))
    return _topics(patches_dir)


def _topics(patches_dir: Path) -> list[Topic]:
    config = _read_config(patches_dir)
    series = read_series_with_topics(patches_dir)
    extra = read_upstream_only(patches_dir)
    return [
        Topic(
            name=name,
            base=config[name].get('base', UPSTREAM_BASE).strip(),
            patches=tuple(p for t, p in series if t == name),
            modules=tuple(config[name].get('modules', '').split()),
            tests=tuple(config[name].get('tests', '').split()),
            upstream_only=tuple(p for p in extra if p.fields.get('Topic') == name),
        ) for name in config.sections()
    ]


def check_topics(patches_dir: Path = PATCHES_DIR, root: Path = ROOT) -> list[str]:
    """Topics in series order with valid bases; every file of ours in exactly one topic; PR-only patches named."""
    problems = []
    config = _read_config(patches_dir)
    names = config.sections()
    series_topics = list(dict.fromkeys(t for t, _ in read_series_with_topics(patches_dir)))
    if None in series_topics:
        problems.append(f'series: patches before the first `# topic:` line')
    if [t for t in series_topics if t is not None] != names:
        problems.append(f'series: its topics ({series_topics}) are not those of {TOPICS_FILE}, in its order ({names})')
    for index, name in enumerate(names):
        base = config[name].get('base', UPSTREAM_BASE).strip()
        if base != UPSTREAM_BASE and base not in names[:index]:
            problems.append(f'{TOPICS_FILE}: [{name}] base = {base}: must be `upstream` or an earlier topic')
    listed = [f for files in read_topic_files(patches_dir).values() for f in files]
    ours = {rel for _, rel in own_files(root)}
    for path in sorted({f for f in listed if listed.count(f) > 1}):
        problems.append(f'{TOPICS_FILE}: {path} belongs to more than one topic')
    for path in sorted(set(listed) - ours):
        problems.append(f'{TOPICS_FILE}: {path} does not exist (or is fork-only)')
    for path in sorted(ours - set(listed)):
        problems.append(f'{TOPICS_FILE}: {path} belongs to no topic: add it to the topic that introduces it')
    extra = read_upstream_only(patches_dir)
    problems += [f'{UPSTREAM_ONLY_DIR}/{p}' for p in check_headers(extra)]
    for patch in extra:
        if patch.fields.get('Topic') not in names:
            problems.append(
                f'{UPSTREAM_ONLY_DIR}/{patch.name}: its Topic field must name a topic of {TOPICS_FILE} '
                f'({", ".join(names)}), not {patch.fields.get("Topic")!r}',
            )
    order = [names.index(p.fields['Topic']) for p in extra if p.fields.get('Topic') in names]
    if order != sorted(order):
        problems.append(f'{UPSTREAM_ONLY_DIR}/series: patches must be grouped in the order of the topics')
    return problems
