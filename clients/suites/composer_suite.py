# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Composer's own tests (mosaicml/composer v0.32.1) over what the series touches, in the fork's .venv."""

from __future__ import annotations

import shutil
from pathlib import Path

from clients.suites.outcomes import SuiteError
from clients.suites.run import INSTALL_TIMEOUT, REPO, Side, Suite, git_describe, log, run

NAME = 'composer'
EXPECTED_TAG = 'v0.32.1'
#: Test paths of the v0.32.1 checkout; the CLI tests are tests/test_cli.py there (there is no tests/cli folder).
PATHS = [
    'tests/test_engine.py',
    'tests/test_events.py',
    'tests/test_cli.py',
    'tests/checkpoint',
    'tests/callbacks',
    'tests/utils',
    'tests/trainer',
]
REQUIREMENTS = Path(__file__).resolve().parent / 'requirements.txt'
DEFAULT_VENV_PYTHON = REPO / '.venv' / 'bin' / 'python'


def install_requirements(python: Path, out: Path) -> None:
    """Installs requirements.txt into the venv, with a constraint that keeps its installed mosaicml (the fork)."""
    version = run([str(python), '-c', 'import importlib.metadata as m; print(m.version("mosaicml"))'],
                  f'reading the mosaicml version installed in {python}').strip()
    if '+signals.' not in version:
        raise SuiteError(f'{python} has mosaicml {version}, not the fork: run `make install` first')
    constraints = out / 'composer-constraints.txt'
    constraints.write_text(f'mosaicml=={version}\n')
    log(f'{NAME}: pip install -r {REQUIREMENTS.relative_to(REPO)} (mosaicml kept at {version})')
    run([
        str(python),
        '-m',
        'pip',
        'install',
        '--disable-pip-version-check',
        '-q',
        '-r',
        str(REQUIREMENTS),
        '-c',
        str(constraints),
    ],
        'installing the test dependencies of upstream\'s suite',
        timeout=INSTALL_TIMEOUT)


def upstream_target(python: Path) -> Path:
    """Upstream's unmodified 0.32.1 package in build/upstream-target (forktool target upstream)."""
    dest = REPO / 'build' / 'upstream-target'
    run([str(python), '-m', 'forktool', 'target', 'upstream', '--dest',
         str(dest)],
        'writing upstream\'s package to build/upstream-target',
        cwd=REPO,
        timeout=INSTALL_TIMEOUT)
    if not (dest / 'composer' / '__init__.py').exists():
        raise SuiteError(f'{dest} has no composer package after `forktool target upstream`')
    return dest


def prepare(checkout: Path, out: Path, python: Path = DEFAULT_VENV_PYTHON, paths: list[str] | None = None) -> Suite:
    """Copies the checkout's tests/ and pyproject.toml (not its composer/ package) into a run folder under out.

    Args:
        checkout: a git checkout of mosaicml/composer at v0.32.1.
        out: the output folder (build/client-tests).
        python: the fork's venv's python.
        paths: test paths to run (default: PATHS).

    Returns:
        The suite, with one side for the installed fork and one for upstream's package first on PYTHONPATH.
    """
    checkout = checkout.resolve()
    if not (checkout / 'tests' / 'conftest.py').exists() or not (checkout / 'pyproject.toml').exists():
        raise SuiteError(
            f'{checkout} is not a checkout of mosaicml/composer (no tests/conftest.py or pyproject.toml); '
            f'e.g. git clone <mosaicml/composer> build/composer && git -C build/composer checkout '
            f'{EXPECTED_TAG}',
        )
    if not python.exists():
        raise SuiteError(f'{python} does not exist: run `make install test-deps` first')
    commit, describe = git_describe(checkout)
    if describe != EXPECTED_TAG:
        raise SuiteError(
            f'{checkout} is at {describe}, not {EXPECTED_TAG}: run git -C {checkout} checkout '
            f'{EXPECTED_TAG}',
        )
    install_requirements(python, out)
    target = upstream_target(python)
    run_dir = out / NAME / 'template' / 'run'
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copytree(checkout / 'tests', run_dir / 'tests', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy2(checkout / 'pyproject.toml', run_dir / 'pyproject.toml')
    paths = paths or PATHS
    missing = [p for p in paths if not (run_dir / p.split('::')[0]).exists()]
    if missing:
        raise SuiteError(f'{checkout} has no {", ".join(missing)}')
    return Suite(
        name=NAME,
        title=f'Composer {EXPECTED_TAG}\'s own tests',
        python=python,
        template=run_dir,
        chunks=paths,
        # Upstream's pyproject.toml addopts apply as they are (-m 'not gpu and not doctest and not daily and not
        # remote', --codeblocks, warnings as errors).
        pytest_args=[],
        sides=[Side('fork', []), Side('upstream', [target])],
        checkout=checkout,
        checkout_commit=commit,
        checkout_describe=describe,
        # No Hugging Face hub here: fail at once rather than retry a connection.
        env={'HF_HUB_OFFLINE': '1'},
        notes=[
            'run folder: a fresh copy, for each pytest run, of the checkout\'s tests/ and pyproject.toml without its '
            'composer/ package',
            'fork side: PYTHONPATH=<run folder>; upstream side: '
            f'PYTHONPATH={target.relative_to(REPO)}:<run folder>; the venv\'s bin/ first on PATH on both '
            '(test_engine_closes_on_atexit runs `python -c` from the composer package\'s parent folder and imports '
            'tests.common, which PYTHONPATH provides)',
            'HF_HUB_OFFLINE=1 on both sides (no hub on this machine)',
        ],
    )
