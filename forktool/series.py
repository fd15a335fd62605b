"""The patch series: read, check, apply with ``git apply``; the developer tree, export and the upstream branch."""

from __future__ import annotations

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
#: Patches to files that are not in the release artifacts (upstream's docs/), for pull requests only: applied to an
#: upstream git checkout, never to the build. Their headers also name the pull request topic they belong to.
UPSTREAM_ONLY_DIR = PATCHES_DIR / 'upstream-only'
UPSTREAM_ONLY_FIELDS = REQUIRED_FIELDS + ('Topic',)
#: Paths under ``tests/`` that serve the fork, not Composer (its build's tests, its test requirements): they stay out
#: of the developer tree and of every upstream pull request.
FORK_ONLY_TESTS = ('tests/fork_build', 'tests/requirements.txt')
OVERLAY_COMMIT_SUBJECT = 'Add the fork\'s new modules and tests (overlay)'
UPSTREAM_TAG = 'upstream'
# Plain, reproducible diffs whatever the user's git configuration says.
DIFF_ARGS = ['diff', '--no-color', '--no-ext-diff', '--no-renames', '--src-prefix=a/', '--dst-prefix=b/']
# Fixed identity and dates make the tree's commits reproducible.
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
    name: str
    header: str  # the DEP-3 header, verbatim, ending with a newline
    diff: str  # the unified diff, verbatim

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
    def subject(self) -> str:
        return self.fields.get('Description', self.name).splitlines()[0]

    def text(self) -> str:
        return f'{self.header}---\n{self.diff}'

    def files(self) -> list[str]:
        return re.findall(r'(?m)^\+\+\+ b/(.+)$', self.diff)


def parse_patch(path: Path) -> Patch:
    text = path.read_text(encoding='utf-8')
    header, sep, diff = text.partition('\n---\n')
    if not sep:
        raise ForkError(f'{path.name}: no `---` line between the DEP-3 header and the diff.')
    return Patch(name=path.name, header=header + '\n', diff=diff)


def read_series(patches_dir: Path = PATCHES_DIR) -> list[Patch]:
    series = patches_dir / SERIES_FILE
    if not series.is_file():
        raise ForkError(f'{series} is missing: it lists the patches in the order they apply.')
    names = [line.strip() for line in series.read_text(encoding='utf-8').splitlines()]
    names = [name for name in names if name and not name.startswith('#')]
    missing = [name for name in names if not (patches_dir / name).is_file()]
    if missing:
        raise ForkError(f'{series} lists patches that do not exist: {", ".join(missing)}')
    return [parse_patch(patches_dir / name) for name in names]


def check_headers(patches: Iterable[Patch], required: tuple[str, ...] = REQUIRED_FIELDS) -> list[str]:
    problems = []
    for patch in patches:
        fields = patch.fields
        for field in required:
            if not fields.get(field):
                problems.append(f'{patch.name}: DEP-3 header field {field} is missing or empty')
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


def apply_patch(patch: Patch, directory: Path, index: bool = False) -> None:
    """Apply one patch with ``git apply`` (exact context, no fuzz); raise a :class:`ForkError` naming the patch."""
    args = ['apply', '--whitespace=nowarn', '--verbose']
    if index:
        args.append('--index')
    with tempfile.NamedTemporaryFile('w', suffix='.patch', delete=False, encoding='utf-8') as f:
        f.write(patch.diff)
    try:
        result = _git(args + [f.name], cwd=directory, check=False)
    finally:
        os.unlink(f.name)
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


def overlay_files(root: Path = ROOT) -> list[tuple[Path, str]]:
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


def copy_overlay(dest: Path, root: Path = ROOT, only: str = '') -> list[str]:
    """Copy the overlay into ``dest``; refuse to overwrite an upstream file (that is what patches are for)."""
    copied = []
    for src, rel in overlay_files(root):
        if only and not rel.startswith(only):
            continue
        target = dest / rel
        if target.exists():
            raise ForkError(f'{rel} exists upstream: change upstream files through patches/, not the overlay.')
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


def _commit_message(patch: Patch) -> str:
    return f'{patch.subject}\n\n{patch.header}'


def _slug(text: str) -> str:
    slug = re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')
    return slug if len(slug) <= 52 else slug[:53].rsplit('-', 1)[0]


def make_tree(dest: Path, pin: Optional[Pin] = None) -> None:
    """Create the developer tree: upstream release (tagged), one commit per patch, then the overlay and tests."""
    pin = pin or read_pin()
    patches = read_series()
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
    for patch in patches:
        apply_patch(patch, dest, index=True)
        _git(['commit', '-q', '--cleanup=verbatim', '-F', '-'], cwd=dest, env=_GIT_ENV, stdin=_commit_message(patch))
    copy_overlay(dest)
    _git(['add', '-A'], cwd=dest)
    _git(['commit', '-q', '-m', OVERLAY_COMMIT_SUBJECT], cwd=dest, env=_GIT_ENV)


def export(
    tree: Path,
    patches_dir: Path = PATCHES_DIR,
    base: str = UPSTREAM_TAG,
    required: tuple[str, ...] = REQUIRED_FIELDS,
) -> list[str]:
    """Regenerate ``patches_dir`` from the tree's commits between ``base`` and the overlay commit.

    With ``base`` an upstream revision and ``required`` :data:`UPSTREAM_ONLY_FIELDS`, this also exports the
    upstream-only patches from a branch of an upstream checkout (``python -m forktool export-upstream-only``).
    """
    if not (tree / '.git').exists():
        raise ForkError(f'{tree} is not a tree made by `make tree`.')
    revs = _git(['rev-list', '--reverse', f'{base}..HEAD'], cwd=tree).stdout.split()
    patches: list[Patch] = []
    for rev in revs:
        message = _git(['log', '-1', '--format=%B', rev], cwd=tree).stdout
        subject, _, body = message.partition('\n\n')
        if subject.strip() == OVERLAY_COMMIT_SUBJECT:
            continue
        header = body.rstrip('\n') + '\n'
        diff = _git(DIFF_ARGS + [f'{rev}^', rev], cwd=tree).stdout
        # Index lines carry blob hashes that churn on every rebase; git apply does not need them.
        diff = ''.join(line for line in diff.splitlines(keepends=True) if not line.startswith('index '))
        patch = Patch(name='', header=header, diff=diff)
        problems = check_headers([patch], required)
        if problems:
            raise ForkError(
                f'commit {rev[:12]} ({subject.strip()}): its message must be the subject line, a blank '
                f'line and the DEP-3 header ({", ".join(required)}); '
                f'{"; ".join(p.split(": ", 1)[1] for p in problems)}.',
            )
        patches.append(Patch(name=f'{len(patches) + 1:04d}-{_slug(patch.subject)}.patch', header=header, diff=diff))
    patches_dir.mkdir(parents=True, exist_ok=True)
    for old in patches_dir.glob('*.patch'):
        if old.name not in {p.name for p in patches}:
            old.unlink()
    for patch in patches:
        _write_if_changed(patches_dir / patch.name, patch.text())
    _write_if_changed(patches_dir / SERIES_FILE, ''.join(f'{p.name}\n' for p in patches))
    return [p.name for p in patches]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding='utf-8') != text:
        path.write_text(text, encoding='utf-8')


def check(pin: Optional[Pin] = None) -> list[str]:
    """Check the series: header fields, and exact application to the pinned release (rebuilt and re-exported)."""
    pin = pin or read_pin()
    patches = read_series()
    problems = check_headers(patches)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            make_tree(Path(tmp) / 'tree', pin)
            exported = Path(tmp) / 'patches'
            export(Path(tmp) / 'tree', exported)
        except ForkError as e:
            return problems + [str(e)]
        for patch in patches:
            regenerated = exported / patch.name
            if not regenerated.is_file() or regenerated.read_text(encoding='utf-8') != patch.text():
                problems.append(
                    f'{patch.name}: applies only with offsets or differs from what git regenerates '
                    '(stale line numbers or context); run `make tree && make export`.',
                )
        regenerated_series = (exported / SERIES_FILE).read_text(encoding='utf-8')
        if regenerated_series != (PATCHES_DIR / SERIES_FILE).read_text(encoding='utf-8'):
            problems.append('patches/series does not match the patch names git regenerates; run `make export`.')
    return problems
