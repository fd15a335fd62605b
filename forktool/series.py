"""The patch series: ``git format-patch`` files with DEP-3 headers, applied with git's own tools.

A patch is what ``git format-patch`` writes for one commit of the developer tree: a mail header (``From``, ``Date``,
``Subject``), the commit message's body, which is the DEP-3 header (``Description``, ``Bug``, ``Forwarded``,
``Last-Update``), and the diff. ``patches/series`` lists them in order, quilt's way, with ``# topic: <name>`` lines
that say where each topic (an upstream pull request, :mod:`forktool.topics`) starts.

* The build applies them to the pinned release with ``git apply`` (exact context, no fuzz; :func:`apply_series`).
* ``make tree`` (:func:`make_tree`) turns the series into a git repository with ``git am``, one commit per patch,
  plus per topic a commit of its new modules before its patches and a commit of its tests after them, and a branch
  ``topic/<name>`` at each topic's last commit, so ``git rebase -i --update-refs upstream`` keeps them in place.
* ``make export`` (:func:`export`) writes the series back with ``git format-patch`` and copies the topics' own files
  back into the repository.
"""

from __future__ import annotations

import email.header
import email.parser
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from forktool import ForkError
from forktool.upstream import ROOT, Pin, locate, read_pin

PATCHES_DIR = ROOT / 'patches'
SERIES_FILE = 'series'
REQUIRED_FIELDS = ('Description', 'Bug', 'Forwarded', 'Last-Update')
#: Patches to files that are not in the release artifacts (upstream's docs/ and tests/), for pull requests only:
#: applied to an upstream git checkout, never to the build. Their headers also name the topic they belong to.
UPSTREAM_ONLY_DIR = PATCHES_DIR / 'upstream-only'
UPSTREAM_ONLY_FIELDS = REQUIRED_FIELDS + ('Topic',)
#: Paths under ``tests/`` that serve the fork, not Composer: they stay out of every tree and pull request.
FORK_ONLY_TESTS = ('tests/fork_build', 'tests/production', 'tests/requirements.txt')
UPSTREAM_TAG = 'upstream'
TOPIC_BRANCH_PREFIX = 'topic/'
TOPIC_MARKER = '# topic: '
# Plain, reproducible patches whatever the user's git configuration says.
FORMAT_PATCH_ARGS = [
    'format-patch',
    '--keep-subject',
    '--no-stat',
    '--zero-commit',
    '--no-signature',
    '--no-renames',
    '--no-color',
    '--src-prefix=a/',
    '--dst-prefix=b/',
]
# Fixed identity and dates make the tree's commits, and so the exported patches, reproducible.
_GIT_ENV = {
    'GIT_AUTHOR_NAME': 'composer-signals-fork',
    'GIT_AUTHOR_EMAIL': 'fork@localhost',
    'GIT_COMMITTER_NAME': 'composer-signals-fork',
    'GIT_COMMITTER_EMAIL': 'fork@localhost',
    'GIT_AUTHOR_DATE': '2000-01-01T00:00:00Z',
    'GIT_COMMITTER_DATE': '2000-01-01T00:00:00Z',
}


@dataclass(frozen=True)
class Patch:
    """One patch file: its name and text (mail header, DEP-3 header, diff)."""

    name: str
    text: str

    @property
    def message(self) -> email.message.Message:
        return email.parser.HeaderParser().parsestr(self.text.split('\ndiff --git ', 1)[0])

    @property
    def subject(self) -> str:
        subject = self.message.get('Subject', '')
        return str(email.header.make_header(email.header.decode_header(subject))).replace('\n', '').strip()

    @property
    def header(self) -> str:
        """The DEP-3 header: the commit message's body, up to the diff."""
        body = self.message.get_payload()
        assert isinstance(body, str)
        return body.split('\n---\n', 1)[0].strip('\n') + '\n'

    @property
    def fields(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        key = None
        for line in self.header.splitlines():
            if line[:1] in (' ', '\t') and key:
                fields[key] += '\n' + line.strip()
            elif ':' in line:
                key, _, value = line.partition(':')
                fields[key.strip()] = value.strip()
        return fields

    @property
    def diff(self) -> str:
        _, sep, diff = self.text.partition('\ndiff --git ')
        return sep.lstrip('\n') + diff

    def files(self) -> list[str]:
        return re.findall(r'(?m)^\+\+\+ b/(.+)$', self.diff)


def parse_patch(path: Path) -> Patch:
    text = path.read_text(encoding='utf-8')
    if not text.startswith('From ') or '\ndiff --git ' not in text:
        raise ForkError(f'{path.name}: not a `git format-patch` patch (it must start with `From ` and hold a diff).')
    return Patch(name=path.name, text=text)


def read_series_with_topics(patches_dir: Path = PATCHES_DIR) -> list[tuple[Optional[str], Patch]]:
    """``patches_dir/series`` as (topic, patch) pairs in order; the topic is ``None`` before the first marker."""
    series = patches_dir / SERIES_FILE
    if not series.is_file():
        raise ForkError(f'{series} is missing: it lists the patches in the order they apply.')
    entries: list[tuple[Optional[str], str]] = []
    topic: Optional[str] = None
    for raw in series.read_text(encoding='utf-8').splitlines():
        line = raw.strip()
        if line.startswith(TOPIC_MARKER):
            topic = line[len(TOPIC_MARKER):].strip()
        elif line and not line.startswith('#'):
            entries.append((topic, line))
    missing = [name for _, name in entries if not (patches_dir / name).is_file()]
    if missing:
        raise ForkError(f'{series} lists patches that do not exist: {", ".join(missing)}')
    return [(topic, parse_patch(patches_dir / name)) for topic, name in entries]


def read_series(patches_dir: Path = PATCHES_DIR) -> list[Patch]:
    return [patch for _, patch in read_series_with_topics(patches_dir)]


def check_headers(patches: Iterable[Patch], required: tuple[str, ...] = REQUIRED_FIELDS) -> list[str]:
    problems = []
    for patch in patches:
        fields = patch.fields
        for field in required:
            if not fields.get(field):
                problems.append(f'{patch.name}: DEP-3 header field {field} is missing or empty')
        if fields.get('Description', '').splitlines()[:1] != [patch.subject]:
            problems.append(f'{patch.name}: the first line of Description must be the subject ({patch.subject!r})')
    return problems


def _git(
    args: list[str],
    cwd: Path,
    check: bool = True,
    env: Optional[dict[str, str]] = None,
    stdin: Optional[str] = None,
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    # Never let git discover a repository above `cwd` (e.g. this repo around build/): `git apply` would then
    # resolve paths against that repository and silently skip files.
    full_env['GIT_CEILING_DIRECTORIES'] = str(Path(cwd).resolve().parent)
    full_env.update(env or {})
    try:
        result = subprocess.run(['git', *args],
                                cwd=cwd,
                                env=full_env,
                                input=stdin,
                                text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ForkError('git is required to apply the patch series (`git apply`); install git and retry.') from None
    if check and result.returncode != 0:
        raise ForkError(f'git {" ".join(args)} failed in {cwd}:\n{result.stderr.strip()}')
    return result


def apply_patch(patch: Patch, directory: Path) -> None:
    """Apply one patch with ``git apply`` (exact context, no fuzz); raise a :class:`ForkError` naming the patch."""
    result = _git(['apply', '--whitespace=nowarn', '--verbose', '-'], cwd=directory, check=False, stdin=patch.text)
    if result.returncode != 0:
        reason = result.stderr.strip()
        failed = re.findall(r'error: (?:patch failed: )?([^:\s]+)(?::\d+)?: ', reason + '\n') or patch.files()
        raise ForkError(
            f'Patch {patch.name} does not apply to {directory.name} (file: {", ".join(dict.fromkeys(failed))}).\n'
            f'git apply says:\n{reason}\n'
            'Nothing was built. Rebase the series: `make tree`, fix the commit in build/tree, then `make export`.',
        )


def apply_series(directory: Path, patches: Optional[list[Patch]] = None) -> list[Patch]:
    patches = read_series() if patches is None else patches
    for patch in patches:
        apply_patch(patch, directory)
    return patches


def am(patches: Iterable[Patch], repo: Path, env: Optional[dict[str, str]] = None) -> None:
    """Commit ``patches`` in ``repo`` with ``git am`` (exact context); the commit message is subject and header."""
    for patch in patches:
        result = _git(['am', '--keep', '--keep-cr', '--no-3way', '--committer-date-is-author-date'],
                      cwd=repo,
                      check=False,
                      env=env,
                      stdin=patch.text)
        if result.returncode != 0:
            _git(['am', '--abort'], cwd=repo, check=False)
            raise ForkError(f'Patch {patch.name} does not apply in {repo} (git am):\n{result.stdout}{result.stderr}')


def own_files(root: Path = ROOT) -> list[tuple[Path, str]]:
    """The fork's own files as (source, path in upstream's layout): ``composer/`` modules and upstream-bound tests."""
    files = []
    for top in ('composer', 'tests'):
        for path in sorted((root / top).rglob('*')):
            rel = path.relative_to(root).as_posix()
            if path.is_dir() or '__pycache__' in path.parts or path.suffix in ('.pyc', '.pyo'):
                continue
            if any(rel == d or rel.startswith(d + '/') for d in FORK_ONLY_TESTS):
                continue
            files.append((path, rel))
    return files


def copy_files(files: Iterable[tuple[Path, str]], dest: Path) -> list[str]:
    """Copy the fork's own files into ``dest``; refuse to overwrite an upstream file (that is what patches are for)."""
    copied = []
    for src, rel in files:
        target = dest / rel
        if target.exists():
            raise ForkError(f'{rel} exists upstream: change upstream files through patches/, not as a file of ours.')
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied.append(rel)
    return copied


def extract_sdist(sdist: Path, dest: Path) -> None:
    """Extract the upstream sdist into ``dest`` without its top-level directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 2 or member.issym() or member.islnk() or '..' in parts:
                continue
            member.name = str(Path(*parts[1:]))
            # A verified upstream artifact; links and `..` are skipped above, the data filter also guards where known.
            tar.extract(member, dest, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))


def commit_files(repo: Path, files: list[tuple[Path, str]], message: str, env: Optional[dict[str, str]]) -> None:
    """One commit adding ``files`` (a topic's new modules or its tests) to ``repo``."""
    if not files:
        return
    paths = copy_files(files, repo)
    _git(['add', '--', *paths], cwd=repo)
    _git(['commit', '-q', '--cleanup=verbatim', '-F', '-'], cwd=repo, env=env, stdin=message)


def make_tree(dest: Path, pin: Optional[Pin] = None, root: Path = ROOT) -> None:
    """Create the developer tree: the upstream release (tag ``upstream``), then every topic as its branch would be."""
    from forktool.topics import read_topics  # topics builds on this module

    pin = pin or read_pin()
    topics = read_topics(root / 'patches', root)
    if dest.exists():
        dirty = _git(['status', '--porcelain'], cwd=dest, check=False).stdout.strip() if (dest / '.git').exists() \
            else 'not a git tree'
        if dirty:
            raise ForkError(
                f'{dest} exists and has uncommitted work ({dirty.splitlines()[0]}); '
                'commit or export it, or remove the directory.',
            )
        shutil.rmtree(dest)
    extract_sdist(locate('sdist', pin), dest)
    _git(['init', '-q', '-b', 'fork'], cwd=dest)
    _git(['add', '-A'], cwd=dest)
    _git(['commit', '-q', '-m', f'mosaicml {pin.version} (upstream release)'], cwd=dest, env=_GIT_ENV)
    _git(['tag', UPSTREAM_TAG], cwd=dest)
    for topic in topics:
        topic.commit_into(dest, root, env=_GIT_ENV)
        _git(['branch', '-f', TOPIC_BRANCH_PREFIX + topic.name], cwd=dest)


def export(tree: Path, patches_dir: Path = PATCHES_DIR, root: Path = ROOT) -> list[str]:
    """Write the tree's patch commits to ``patches_dir`` (``git format-patch``) and its topics' own files to ``root``.

    A commit that changes only files that ``patches/topics`` lists as a topic's own is not a patch: those files are
    copied back from ``HEAD``. Every other commit must change no such file. ``patches/series`` is rewritten with the
    topics that the tree's ``topic/<name>`` branches delimit.
    """
    from forktool.topics import read_topic_files

    if not (tree / '.git').exists():
        raise ForkError(f'{tree} is not a tree made by `make tree`.')
    declared = read_topic_files(patches_dir)
    owned = {path for files in declared.values() for path in files}
    ends = {}
    for name in declared:
        rev = _git(['rev-parse', '--verify', '--quiet', TOPIC_BRANCH_PREFIX + name], cwd=tree, check=False).stdout
        if not rev.strip():
            raise ForkError(f'{tree} has no branch {TOPIC_BRANCH_PREFIX}{name}; it marks where that topic ends.')
        ends[rev.strip()] = name
    added = _git(['diff', '--name-only', '--diff-filter=A', UPSTREAM_TAG, 'HEAD'], cwd=tree).stdout.split()
    unknown = [p for p in added if p not in owned]
    if unknown:
        raise ForkError(
            f'new files that no topic owns: {", ".join(unknown)}. Add each to its topic in patches/topics (or, if it '
            'changes an upstream file, it is not new: check the path).',
        )
    revs = _git(['rev-list', '--reverse', f'{UPSTREAM_TAG}..HEAD'], cwd=tree).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        lines: list[str] = []
        names: list[str] = []
        topic_of_commits: list[str] = []
        pending: list[str] = []
        for rev in revs:
            changed = _git(['diff-tree', '--no-commit-id', '--name-only', '-r', rev], cwd=tree).stdout.split()
            ours = [p for p in changed if p in owned]
            if ours and len(ours) != len(changed):
                raise ForkError(
                    f'commit {rev[:12]} changes both upstream files and files of ours ({", ".join(ours)}); split it: '
                    'a patch changes upstream files only.',
                )
            if not ours:
                pending.append(rev)
            if rev in ends:
                topic_of_commits.append(ends[rev])
                lines.append(TOPIC_MARKER + ends[rev])
                for patch_rev in pending:
                    number = len(names) + 1
                    out = _git(FORMAT_PATCH_ARGS + ['-1', f'--start-number={number}', '-o', tmp, patch_rev],
                               cwd=tree).stdout.strip()
                    names.append(Path(out).name)
                    lines.append(Path(out).name)
                pending = []
        if pending:
            raise ForkError(f'{len(pending)} commit(s) after the last topic branch; move {TOPIC_BRANCH_PREFIX}<name>.')
        for path in Path(tmp).iterdir():
            patch = parse_patch(path)
            problems = check_headers([patch])
            if problems:
                raise ForkError(
                    f'{patch.subject}: its commit message must be the subject line, a blank line and the DEP-3 '
                    f'header ({", ".join(REQUIRED_FIELDS)}); {"; ".join(problems)}.',
                )
        patches_dir.mkdir(parents=True, exist_ok=True)
        for old in patches_dir.glob('*.patch'):
            if old.name not in names:
                old.unlink()
        for name in names:
            _write_if_changed(patches_dir / name, (Path(tmp) / name).read_text(encoding='utf-8'))
    _write_if_changed(patches_dir / SERIES_FILE, ''.join(f'{line}\n' for line in lines))
    for path in sorted(owned):
        blob = _git(['show', f'HEAD:{path}'], cwd=tree, check=False)
        if blob.returncode == 0:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            _write_if_changed(root / path, blob.stdout)
    return names


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding='utf-8') != text:
        path.write_text(text, encoding='utf-8')


def check(pin: Optional[Pin] = None, root: Path = ROOT) -> list[str]:
    """Check the series: headers, and that a tree made from it exports to exactly the same patches."""
    pin = pin or read_pin()
    patches = read_series(root / 'patches')
    problems = check_headers(patches)
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / 'patches'
        shutil.copytree(root / 'patches', exported)
        try:
            make_tree(Path(tmp) / 'tree', pin, root)
            export(Path(tmp) / 'tree', exported, root=Path(tmp) / 'root')
        except ForkError as e:
            return problems + [str(e)]
        for patch in patches:
            regenerated = exported / patch.name
            if not regenerated.is_file() or regenerated.read_text(encoding='utf-8') != patch.text:
                problems.append(
                    f'{patch.name}: applies only with offsets or differs from what git regenerates '
                    '(stale line numbers or context); run `make tree && make export`.',
                )
        if (exported / SERIES_FILE).read_text(
            encoding='utf-8',
        ) != (root / 'patches' / SERIES_FILE).read_text(encoding='utf-8'):
            problems.append('patches/series does not match the patch names git regenerates; run `make export`.')
    return problems


def export_upstream_only(repo: Path, base: str, dest: Path = UPSTREAM_ONLY_DIR) -> list[str]:
    """Write the PR-only patches from the commits ``base..HEAD`` of an upstream checkout (``git format-patch``)."""
    with tempfile.TemporaryDirectory() as tmp:
        _git(FORMAT_PATCH_ARGS + ['-o', tmp, f'{base}..HEAD'], cwd=repo)
        patches = [parse_patch(p) for p in sorted(Path(tmp).glob('*.patch'))]
        problems = check_headers(patches, UPSTREAM_ONLY_FIELDS)
        if problems:
            raise ForkError('; '.join(problems))
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob('*.patch'):
            if old.name not in {p.name for p in patches}:
                old.unlink()
        for patch in patches:
            _write_if_changed(dest / patch.name, patch.text)
    _write_if_changed(dest / SERIES_FILE, ''.join(f'{p.name}\n' for p in patches))
    return [p.name for p in patches]
