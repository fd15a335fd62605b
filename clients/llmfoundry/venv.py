# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The client venv: LLM Foundry 0.22.0 with the fork, built from this working tree, as its ``mosaicml``.

Usage (from the repository root)::

    python -m clients.llmfoundry.venv [--dest build/client-venv] [--reinstall-fork]

prints the venv's python path as the last (and only) line of stdout; progress goes to stderr, so
``PY=$(python -m clients.llmfoundry.venv)`` works in a shell.

What it does:

1. creates the venv at ``--dest`` (default ``build/client-venv``) with ``python -m venv`` and a pip >= 24.1;
2. builds the fork's wheel from the working tree (``pip wheel --no-deps``; if that fails, e.g. because patches are
   being edited, from the committed ``HEAD`` in a temporary git worktree) into ``<dest>/wheels/``;
3. writes ``<dest>/constraints.txt`` pinning ``mosaicml==<fork version>``, ``llm-foundry==0.22.0`` and
   ``torch==2.7.0`` (the torch that llm-foundry 0.22.0 pins), and installs ``llm-foundry==0.22.0`` with that
   constraints file and ``--find-links <dest>/wheels``: pip can satisfy ``mosaicml[...]>=0.32.0,<0.33`` only with the
   fork's wheel, never with upstream's release from the index;
4. checks in the venv that ``import composer; composer.__version__`` is the fork's version.

It is idempotent. A re-run when the venv already has llm-foundry 0.22.0, torch 2.7.0 and the fork's current version
(``python -m forktool version``, from ``upstream.cfg``) only does step 4. When the fork's version changed, it rebuilds
the fork's wheel and reinstalls just that (``--no-deps --force-reinstall``). ``--reinstall-fork`` does the same for an
unchanged version (pip treats the same name and version as installed: pip issue #7678).

The first build installs torch 2.7.0 with its CUDA libraries (5 to 11 minutes, 7 GB on disk); pip's cache
(``pip cache dir``) keeps the downloads for the next build. Every step has a timeout and fails with a message that
says what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO / 'build' / 'client-venv'
LLM_FOUNDRY_VERSION = '0.22.0'
TORCH_VERSION = '2.7.0'
#: Seconds: creating the venv, the full first install (downloads torch and its CUDA libraries), a wheel build, a check.
VENV_TIMEOUT = 300
INSTALL_TIMEOUT = 3600
WHEEL_TIMEOUT = 900
CHECK_TIMEOUT = 300
#: What the fork's wheel is built from: a change here makes the working tree's build differ from HEAD's.
FORK_SOURCES = ('composer', 'patches', 'forktool', 'upstream.cfg', 'setup.py', 'pyproject.toml')
#: Beside the wheel: the commit it was built from.
SOURCE_FILE = 'built-from.json'


class VenvError(Exception):
    """A step of the client venv's build failed; the message says what to do."""


def log(message: str) -> None:
    print(f'client-venv: {message}', file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout: float, what: str, capture: bool = False, **kwargs) -> str:
    """Run ``cmd`` (output to stderr unless ``capture``); raise :class:`VenvError` naming ``what`` on failure."""
    try:
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired:
        raise VenvError(f'{what} took longer than {timeout:.0f} s and was stopped: {" ".join(cmd)}') from None
    except OSError as e:
        raise VenvError(f'{what} could not start ({e}): {" ".join(cmd)}') from None
    if result.returncode != 0:
        output = f'\n{result.stdout}' if capture and result.stdout else ' (its output is above)'
        raise VenvError(f'{what} failed with exit code {result.returncode}: {" ".join(cmd)}{output}')
    return result.stdout if capture else ''


def fork_version() -> str:
    """The fork's version as the working tree's ``upstream.cfg`` gives it (``python -m forktool version``)."""
    out = _run([sys.executable, '-m', 'forktool', 'version'],
               CHECK_TIMEOUT,
               'Reading the fork\'s version',
               capture=True,
               cwd=REPO)
    return out.strip().splitlines()[-1]


def venv_python(dest: Path) -> Path:
    return dest / 'bin' / 'python'


def installed_versions(python: Path) -> dict[str, Optional[str]]:
    """Versions of mosaicml, llm-foundry and torch installed in the venv of ``python`` (None: not installed)."""
    code = (
        'import importlib.metadata as m, json\n'
        'def v(n):\n'
        '    try:\n'
        '        return m.version(n)\n'
        '    except m.PackageNotFoundError:\n'
        '        return None\n'
        "print(json.dumps({n: v(n) for n in ('mosaicml', 'llm-foundry', 'torch')}))\n"
    )
    out = _run([str(python), '-c', code], CHECK_TIMEOUT, 'Reading the venv\'s installed versions', capture=True)
    return json.loads(out.strip().splitlines()[-1])


def _create(dest: Path) -> Path:
    python = venv_python(dest)
    if not python.exists():
        log(f'creating {dest}')
        dest.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, '-m', 'venv', str(dest)], VENV_TIMEOUT, 'Creating the venv')
        _run([str(python), '-m', 'pip', 'install', '--quiet', '--upgrade', 'pip>=24.1'], VENV_TIMEOUT,
             'Upgrading pip in the venv (it needs PyPI or your index)')
    return python


def build_fork_wheel(python: Path, wheel_dir: Path) -> Path:
    """Build the fork's wheel from the working tree (or, if that fails, from ``HEAD``) into an emptied ``wheel_dir``."""
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    wheel_dir.mkdir(parents=True)
    cmd = [str(python), '-m', 'pip', 'wheel', '--quiet', '--no-deps', '-w', str(wheel_dir)]
    try:
        log(f'building the fork\'s wheel from the working tree {REPO}')
        source = source_commit()
        _run(cmd + [str(REPO)], WHEEL_TIMEOUT, 'Building the fork\'s wheel from the working tree')
    except VenvError as e:
        source = source_commit(head=True)
        log(f'{e}\nclient-venv: building from the committed HEAD instead')
        with tempfile.TemporaryDirectory(prefix='client-venv-head-') as tmp:
            tree = Path(tmp) / 'head'
            _run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', '--quiet',
                  str(tree), 'HEAD'], CHECK_TIMEOUT, 'Adding a worktree of HEAD')
            try:
                _run(cmd + [str(tree)], WHEEL_TIMEOUT, 'Building the fork\'s wheel from HEAD')
            finally:
                _run(['git', '-C', str(REPO), 'worktree', 'remove', '--force',
                      str(tree)], CHECK_TIMEOUT, 'Removing the worktree of HEAD')
    wheels = sorted(wheel_dir.glob('mosaicml-*.whl'))
    if len(wheels) != 1:
        raise VenvError(f'Expected one mosaicml wheel in {wheel_dir}, found {[w.name for w in wheels]}.')
    (wheel_dir / SOURCE_FILE).write_text(json.dumps({'commit': source}), encoding='utf-8')
    return wheels[0]


def source_commit(head: bool = False) -> str:
    """``git rev-parse --short HEAD``, with `` + uncommitted changes`` if the fork's sources differ from it."""
    commit = _run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'],
                  CHECK_TIMEOUT,
                  'git rev-parse',
                  capture=True).strip()
    if head:
        return commit
    status = _run(['git', '-C', str(REPO), 'status', '--porcelain', '--', *FORK_SOURCES],
                  CHECK_TIMEOUT,
                  'git status',
                  capture=True)
    return commit + (' + uncommitted changes' if status.strip() else '')


def built_from(dest: Path = DEFAULT_DEST) -> Optional[str]:
    """The commit the venv's fork was built from, as :func:`source_commit` gave it at build time (None: unknown)."""
    try:
        return json.loads((dest / 'wheels' / SOURCE_FILE).read_text(encoding='utf-8'))['commit']
    except (OSError, ValueError, KeyError):
        return None


def wheel_version(wheel: Path) -> str:
    match = re.fullmatch(r'mosaicml-([^-]+)-.*\.whl', wheel.name)
    if not match:
        raise VenvError(f'{wheel.name} is not a mosaicml wheel file name.')
    return match.group(1)


def write_constraints(dest: Path, version: str) -> Path:
    path = dest / 'constraints.txt'
    path.write_text(
        '# Written by clients/llmfoundry/venv.py: the fork (wheels/ beside this file) stays the venv\'s mosaicml.\n'
        f'mosaicml=={version}\nllm-foundry=={LLM_FOUNDRY_VERSION}\ntorch=={TORCH_VERSION}\n',
        encoding='utf-8',
    )
    return path


def verify(python: Path, expected: str) -> None:
    """Import composer in the venv (as a program run from / would, outside this repository) and check its version."""
    out = _run([str(python), '-c', 'import composer; print(composer.__version__)'],
               CHECK_TIMEOUT,
               'Importing composer in the client venv',
               capture=True,
               cwd='/')
    got = out.strip().splitlines()[-1] if out.strip() else ''
    if got != expected:
        raise VenvError(
            f'The client venv\'s composer is {got!r}, not the fork\'s {expected!r}. Rebuild it with '
            '`python -m clients.llmfoundry.venv --reinstall-fork`, or delete the venv folder and run it again.',
        )


def ensure_venv(dest: Path = DEFAULT_DEST, reinstall_fork: bool = False, done: Optional[list[str]] = None) -> Path:
    """Make the client venv at ``dest`` current (see the module docstring) and return its python.

    Args:
        dest (Path): The venv folder.
        reinstall_fork (bool): Rebuild and reinstall the fork even if the venv has its version.
        done (list[str], optional): Gets what was done appended: ``'up to date'``, ``'fork reinstalled'`` or
            ``'installed'``.
    """
    done = [] if done is None else done
    dest = dest.resolve()
    version = fork_version()
    python = _create(dest)
    have = installed_versions(python)
    wheel_dir = dest / 'wheels'
    complete = have['llm-foundry'] == LLM_FOUNDRY_VERSION and have['torch'] == TORCH_VERSION
    if complete and have['mosaicml'] == version and not reinstall_fork:
        log(f'up to date: llm-foundry {LLM_FOUNDRY_VERSION}, torch {TORCH_VERSION}, mosaicml {version}')
        done.append('up to date')
    else:
        wheel = build_fork_wheel(python, wheel_dir)
        version = wheel_version(wheel)  # HEAD's, if the working tree did not build
        constraints = write_constraints(dest, version)
        pip = [str(python), '-m', 'pip', 'install', '--find-links', str(wheel_dir), '-c', str(constraints)]
        if complete:
            log(f'reinstalling the fork only: mosaicml {have["mosaicml"]} -> {version}')
            done.append('fork reinstalled')
            _run(pip + ['--no-deps', '--force-reinstall', str(wheel)], INSTALL_TIMEOUT, 'Reinstalling the fork')
        else:
            log(f'installing llm-foundry=={LLM_FOUNDRY_VERSION} with the fork {version} (first time: 5-11 min, 7 GB)')
            done.append('installed')
            _run(
                pip + [str(wheel), f'llm-foundry=={LLM_FOUNDRY_VERSION}'],
                INSTALL_TIMEOUT,
                'Installing llm-foundry with the fork (it needs PyPI or your index; see the pip output above)',
            )
            # pip #7678: a fork of the same version already there is kept; make sure it is this wheel.
            _run(
                pip +
                ['--no-deps', '--force-reinstall', '--quiet', str(wheel)],
                INSTALL_TIMEOUT,
                'Reinstalling the fork',
            )
    verify(python, version)
    log(f'composer {version} verified in {python}')
    return python


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m clients.llmfoundry.venv',
        description='Build (idempotently) the venv with llm-foundry 0.22.0 and the fork as mosaicml; print its python.',
    )
    parser.add_argument('--dest', type=Path, default=DEFAULT_DEST, help='the venv folder (default: %(default)s)')
    parser.add_argument(
        '--reinstall-fork',
        action='store_true',
        help='rebuild and reinstall the fork even if its version is unchanged',
    )
    args = parser.parse_args(argv)
    try:
        python = ensure_venv(args.dest, reinstall_fork=args.reinstall_fork)
    except VenvError as e:
        print(f'client-venv: error: {e}', file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PIP_DISABLE_PIP_VERSION_CHECK', '1')
    sys.exit(main())
