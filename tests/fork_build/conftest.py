"""Fixtures for the tests of the fork's build machine (not sent upstream)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: What a build needs from the repository (what `git ls-files` would list for these paths).
BUILD_INPUTS = (
    'setup.py',
    'pyproject.toml',
    'upstream.cfg',
    'forktool',
    'patches',
    'composer',
    'README.md',
    'CHANGELOG.md',
)


@pytest.fixture(scope='session')
def pin():
    from forktool.upstream import read_pin
    return read_pin()


@pytest.fixture(scope='session')
def upstream_wheel(pin) -> Path:
    from forktool.upstream import locate
    return locate('wheel', pin)


@pytest.fixture(scope='session')
def upstream_sdist(pin) -> Path:
    from forktool.upstream import locate
    return locate('sdist', pin)


@pytest.fixture(scope='session')
def fork_wheel(tmp_path_factory) -> Path:
    """The fork's wheel, built the way pip builds it (PEP 517 through setup.py)."""
    out = tmp_path_factory.mktemp('wheel')
    proc = pip_wheel(ROOT, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob('*.whl')
    return wheel


def run_pip(command: str, *args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run this venv's ``pip <command>`` on the fork alone: no dependencies, no build isolation (works offline)."""
    pip = [sys.executable, '-m', 'pip', command, '--no-deps', '--no-build-isolation', '--disable-pip-version-check']
    return subprocess.run(
        pip + list(args),
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            **(env or {}),
        },
    )


def pip_wheel(source: Path, out: Path, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return run_pip('wheel', '-w', str(out), str(source), env=env)


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the build inputs, to break on purpose."""
    dest = tmp_path / 'repo'
    dest.mkdir()
    for name in BUILD_INPUTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(src, dest / name)
    return dest
