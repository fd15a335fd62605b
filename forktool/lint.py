"""Upstream's pre-commit checks on the files a branch of an upstream checkout changes or adds.

Upstream Composer lints with pre-commit (``.pre-commit-config.yaml`` at v0.32.1). Pre-commit clones each hook's
repository from GitHub, which CI cannot reach, so this module runs the same tools at the same pinned versions from
PyPI (``lint-requirements.txt``, installed into ``build/lint-venv``), with the same arguments, exclusions and
settings (upstream's ``pyproject.toml`` of the linted tree applies: the files are linted inside a copy of that tree):

* ruff 0.2.2, yapf 0.43.0, isort 5.12.0, pydocstyle 6.1.1 (Google convention and the ignore/select lists of
  ``[tool.pydocstyle]``; the hook's ``exclude`` keeps tests and some packages out);
* pre-commit-hooks v4.1.0's hooks that look at source files (``check-docstring-first``,
  ``double-quote-string-fixer``, ``check-ast``, ...); the fixers run on a copy and report the change they would make;
* Lucas-C/pre-commit-hooks v1.5.4 ``insert-license`` (not on PyPI), reimplemented in :func:`check_license`;
* reStructuredText pages (upstream's docs) parse with docutils without warnings (:mod:`forktool.rstcheck`);
* pyright with ``[tool.pyright]``: basedpyright on each changed file at ``HEAD`` and at the base revision; only
  errors and warnings (upstream runs pyright with ``--warnings``) the base does not have are reported.

``python -m forktool lint-upstream --repo <git checkout> --base <rev>`` lints ``base..HEAD``; ``make lint`` runs it on
a tree built by ``make tree`` (base: its ``upstream`` tag).
"""

from __future__ import annotations

import collections
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.upstream import ROOT

REQUIREMENTS = ROOT / 'lint-requirements.txt'
DEFAULT_VENV = ROOT / 'build' / 'lint-venv'

# .pre-commit-config.yaml, top level: `exclude: .ci\/release_tests\/.*` (pre-commit matches with re.search).
GLOBAL_EXCLUDE = re.compile(r'.ci\/release_tests\/.*')
# The pydocstyle hook's `exclude`.
PYDOCSTYLE_EXCLUDE = re.compile(
    r'(?:tests|.ci|composer\/algorithms|composer\/datasets|composer\/models)\/.*|'
    r'composer\/trainer\/activation_checkpointing.py',
)
# The insert-license hook's `exclude`, and its `--license-filepath .pre-commit/FILE_HEADER`. The sdist that
# `make tree` starts from has no .pre-commit/, so the header's text (upstream's file at v0.32.1) is kept here too.
LICENSE_EXCLUDE = re.compile(r'composer\/trainer\/activation_checkpointing.py')
LICENSE_FILE = '.pre-commit/FILE_HEADER'
LICENSE_TEXT = 'Copyright 2024 MosaicML Composer authors\nSPDX-License-Identifier: Apache-2.0\n'
# pre-commit-hooks v4.1.0 hooks run on Python files, and on every text file; fixers run on a copy.
PY_CHECKS = ('check-ast', 'check-builtin-literals', 'check-docstring-first', 'debug-statement-hook')
PY_FIXERS = (('double-quote-string-fixer',),)
TEXT_FIXERS = (
    ('end-of-file-fixer',),
    ('trailing-whitespace-fixer',),
    ('mixed-line-ending',),
    ('fix-byte-order-marker',),
)
SUFFIX_CHECKS = {
    '.json': 'check-json',
    '.toml': 'check-toml',
    '.xml': 'check-xml',
    '.yaml': 'check-yaml',
    '.yml': 'check-yaml',
}
# pyright 1.1.310 (upstream's pin) defaults to "basic"; basedpyright's own default ("recommended") adds rules.
PYRIGHT_MODE = 'basic'
# What the linted trees must hold for the tools to find their settings and for imports to resolve.
TREE_PATHS = ('pyproject.toml', 'setup.cfg', '.pre-commit', 'composer', 'tests', 'examples')


def _run(cmd: list[str], cwd: Path, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            **(env or {}),
        },
    )


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(['git', '-C', str(repo), *args], text=True, capture_output=True)
    if result.returncode != 0:
        raise ForkError(f'git {" ".join(args)} failed in {repo}:\n{result.stderr.strip()}')
    return result.stdout


def ensure_venv(path: Path = DEFAULT_VENV, requirements: Path = REQUIREMENTS) -> Path:
    """Create or update the lint venv from the pinned requirements; return its ``bin`` directory."""
    path = Path(os.path.abspath(path))  # the tools run from temporary trees
    bindir = path / 'bin'
    stamp = path / '.requirements.sha256'
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return bindir
    if not (bindir / 'python').exists():
        venv.create(path, with_pip=True)
    pip = [str(bindir / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
    result = subprocess.run(pip + ['-r', str(requirements)])
    if result.returncode != 0:
        raise ForkError(f'could not install {requirements.name} into {path}.')
    stamp.write_text(digest + '\n')
    return bindir


def changed_files(repo: Path, base: str, head: str = 'HEAD') -> list[str]:
    """Files added or modified in ``base..head`` (renames count as additions), minus upstream's global exclude."""
    out = _git(repo, 'diff', '--name-only', '--no-renames', '--diff-filter=AM', f'{base}...{head}', '--')
    return [f for f in out.splitlines() if f and not GLOBAL_EXCLUDE.search(f)]


def export_tree(repo: Path, rev: str, dest: Path, extra: list[str]) -> None:
    """Write the settings files, the packages and ``extra`` of ``rev`` into ``dest`` (no .git: nothing to touch)."""
    listed = _git(repo, 'ls-tree', '--name-only', rev, '--', *TREE_PATHS).split()
    present = set(_git(repo, 'ls-tree', '-r', '--name-only', rev, '--', *extra).split()) if extra else set()
    paths = sorted(set(listed) | present)
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(['git', '-C', str(repo), 'archive', '--format=tar', rev, '--', *paths],
                             capture_output=True)
    if archive.returncode != 0:
        raise ForkError(f'git archive {rev} failed in {repo}:\n{archive.stderr.decode().strip()}')
    with tempfile.TemporaryFile() as f:
        f.write(archive.stdout)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))


def check_license(path: Path, header: str, top_lines_count: int = 5) -> bool:
    """Lucas-C/pre-commit-hooks v1.5.4 ``insert-license --comment-style '#' --allow-past-years``, as a check.

    As the hook: the header, each line prefixed with ``#``, must be found as consecutive lines (compared stripped)
    starting in the file's first ``top_lines_count`` lines (``--detect-license-in-X-top-lines``, default 5), unless
    those lines hold the skip comment ``SKIP LICENSE INSERTION``. ``--allow-past-years`` compares the lines with
    their years (``_YEARS_PATTERN``) removed, so any year, or range of years, is accepted.
    """
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    if any('SKIP LICENSE INSERTION' in line for line in lines[:top_lines_count]):
        return True
    license_lines = [f'# {line}' if line.strip() else '#' for line in header.splitlines()]
    years = re.compile(r'\b\d{4}([ ,-]+\d{2,4})*\b')

    def matches(want: str, have: str) -> bool:
        return years.sub('', want.strip()) == years.sub('', have.strip())

    for start in range(top_lines_count):
        if start + len(license_lines) <= len(lines) and all(
            matches(want, lines[start + j]) for j, want in enumerate(license_lines)
        ):
            return True
    return False


def _is_text(path: Path) -> bool:
    return path.is_file() and b'\0' not in path.read_bytes()[:8192]


def _run_fixer(bindir: Path, hook: tuple[str, ...], tree: Path, rel: str, scratch: Path) -> Optional[str]:
    """Run a fixing hook on a copy of ``rel``; return the diff it would apply, or None."""
    copy = scratch / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tree / rel, copy)
    before = copy.read_bytes()
    _run([str(bindir / hook[0]), *hook[1:], rel], cwd=scratch)
    after = copy.read_bytes()
    copy.unlink()
    if after == before:
        return None
    diff = difflib.unified_diff(
        before.decode(errors='replace').splitlines(keepends=True),
        after.decode(errors='replace').splitlines(keepends=True),
        f'a/{rel}',
        f'b/{rel}',
    )
    return ''.join(diff) or f'{rel}: would be changed (line endings or byte order mark)\n'


def _pyright_config(tree: Path) -> None:
    """``pyrightconfig.json`` with the tree's ``[tool.pyright]`` settings (it takes precedence over pyproject)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the lint venv has `toml`
        import toml as tomllib  # type: ignore[no-redef]
    settings = dict(tomllib.loads((tree / 'pyproject.toml').read_text()).get('tool', {}).get('pyright', {}))
    settings.setdefault('typeCheckingMode', PYRIGHT_MODE)
    (tree / 'pyrightconfig.json').write_text(json.dumps(settings, indent=1))


def _pyright(bindir: Path, tree: Path, files: list[str], python: str) -> list[tuple[str, str, str, str]]:
    """basedpyright's errors and warnings on ``files`` of ``tree``, as (file, rule, severity, message)."""
    if not files:
        return []
    _pyright_config(tree)
    # --pythonpath: the interpreter whose site-packages resolve third-party imports (torch, ...), the venv of `make`.
    result = _run([str(bindir / 'basedpyright'), '--outputjson', '--pythonpath', python, *files], cwd=tree)
    try:
        report = json.loads(result.stdout[result.stdout.index('{'):])
    except ValueError:
        raise ForkError(f'basedpyright did not report (exit {result.returncode}):\n{result.stdout[-3000:]}') from None
    found = []
    for diag in report.get('generalDiagnostics', []):
        if diag.get('severity') not in ('error', 'warning'):
            continue
        path = Path(diag['file']).resolve()
        if tree.resolve() not in path.parents:
            continue
        rel = path.relative_to(tree.resolve()).as_posix()
        found.append((rel, diag.get('rule', ''), diag['severity'], diag['message']))
    return found


def lint_upstream(
    repo: Path,
    base: str,
    python: str = sys.executable,
    venv_dir: Path = DEFAULT_VENV,
    pyright: bool = True,
    log=print,
) -> list[str]:
    """Run upstream's pre-commit checks on the files ``base..HEAD`` adds or changes; return the findings."""
    repo = repo.resolve()
    # The tools run in temporary trees: an absolute path, but not resolved (a venv's python is a symlink).
    python = os.path.abspath(python)
    files = changed_files(repo, base)
    if not files:
        log(f'lint-upstream: no file added or changed in {base}..HEAD')
        return []
    bindir = ensure_venv(venv_dir)
    py_files = [f for f in files if f.endswith('.py')]
    log(f'lint-upstream: {len(files)} files changed in {base}..HEAD ({len(py_files)} Python)')
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix='lint-upstream-') as tmp:
        head_tree, base_tree, scratch = Path(tmp) / 'head', Path(tmp) / 'base', Path(tmp) / 'scratch'
        export_tree(repo, 'HEAD', head_tree, files)
        scratch.mkdir()

        def tool(name: str, cmd: list[str]) -> None:
            result = _run(cmd, cwd=head_tree)
            if result.returncode != 0:
                problems.append(f'{name}:\n{result.stdout.rstrip()}')
            log(f'  {name}: {"FAILED" if result.returncode else "ok"}')

        if py_files:
            # Hook `ruff` (entry `ruff check --force-exclude`, args --fix --exit-non-zero-on-fix): any violation fails
            # it, fixable or not.
            tool('ruff 0.2.2', [str(bindir / 'ruff'), 'check', '--force-exclude', '--no-cache', '--no-fix', *py_files])
            # Hook `yapf` (args -i -vv -p): a file it would reformat fails it.
            tool('yapf 0.43.0', [str(bindir / 'yapf'), '--diff', *py_files])
            # Hook `isort` (its default args: --filter-files).
            tool('isort 5.12.0', [str(bindir / 'isort'), '--filter-files', '--check-only', '--diff', *py_files])
            doc_files = [f for f in py_files if not PYDOCSTYLE_EXCLUDE.search(f)]
            if doc_files:
                tool('pydocstyle 6.1.1', [str(bindir / 'pydocstyle'), *doc_files])
            for hook in PY_CHECKS:
                tool(hook, [str(bindir / hook), *py_files])
            header = (head_tree / LICENSE_FILE).read_text() if (head_tree / LICENSE_FILE).is_file() else LICENSE_TEXT
            missing = [
                f for f in py_files if not LICENSE_EXCLUDE.search(f) and not check_license(head_tree / f, header)
            ]
            if missing:
                problems.append(
                    'insert-license: no license header (.pre-commit/FILE_HEADER) in the first lines of ' +
                    ', '.join(missing),
                )
            log(f'  insert-license: {"FAILED" if missing else "ok"}')
        text_files = [f for f in files if _is_text(head_tree / f)]
        for hook in (PY_FIXERS if py_files else ()) + TEXT_FIXERS:
            targets = py_files if hook in PY_FIXERS else text_files
            diffs = [d for d in (_run_fixer(bindir, hook, head_tree, f, scratch) for f in targets) if d]
            if diffs:
                problems.append(f'{hook[0]} would change:\n' + ''.join(diffs).rstrip())
            log(f'  {hook[0]}: {"FAILED" if diffs else "ok"}')
        rst_files = [f for f in files if f.endswith('.rst')]
        if rst_files:
            # Not a pre-commit hook upstream (it builds its docs with Sphinx); see forktool/rstcheck.py.
            result = _run([str(bindir / 'python'), '-m', 'forktool.rstcheck', *rst_files],
                          cwd=head_tree,
                          env={'PYTHONPATH': str(ROOT)})
            if result.returncode != 0:
                problems.append(f'rst (docutils):\n{result.stdout.rstrip()}')
            log(f'  rst (docutils): {"FAILED" if result.returncode else "ok"}')
        for suffix, hook in SUFFIX_CHECKS.items():
            targets = [f for f in files if f.endswith(suffix)]
            if targets:
                tool(hook, [str(bindir / hook), *targets])

        if pyright and py_files:
            head = _pyright(bindir, head_tree, py_files, python)
            existing = set(_git(repo, 'ls-tree', '-r', '--name-only', base, '--', *py_files).split())
            old: list[tuple[str, str, str, str]] = []
            if existing:
                export_tree(repo, base, base_tree, sorted(existing))
                old = _pyright(bindir, base_tree, sorted(existing), python)
            # Line numbers shift between the two versions: compare (file, rule, severity, message) multisets.
            new = collections.Counter(head) - collections.Counter(old)
            if new:
                problems.append(
                    'pyright (basedpyright, upstream [tool.pyright]), new since the base:\n' + '\n'.join(
                        f'  {f}: {sev}: {msg} ({rule})' for (f, rule, sev, msg), n in sorted(new.items())
                        for _ in range(n)
                    ),
                )
            log(
                f'  pyright: {"FAILED" if new else "ok"} ({len(head)} at HEAD, {len(old)} at the base, '
                f'{sum(new.values())} new)',
            )
    return problems
