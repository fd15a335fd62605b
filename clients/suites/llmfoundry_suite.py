# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""LLM Foundry release/v0.22.0's own CPU tests that drive Composer's Trainer, in the client venv.

The client venv (``python -m clients.llmfoundry.venv``) has llm-foundry 0.22.0 from PyPI with the fork as its
``mosaicml``. The checkout's ``tests/``, ``scripts/`` (the tests read its YAMLs and data) and ``pyproject.toml`` (its
pytest configuration: ``-m 'not gpu'``) are copied into a run folder without its ``llmfoundry/`` package, so the
installed llm-foundry 0.22.0 is the one under test on both sides. Hub tokenizers are replaced by locally trained ones
(clients/suites/tokenizers.py); the tests that still need the network are deselected (llmfoundry-deselect.toml).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from clients.suites import composer_suite
from clients.suites.outcomes import SuiteError
from clients.suites.run import INSTALL_TIMEOUT, REPO, Side, Suite, git_describe, log, run

NAME = 'llmfoundry'
VERSION = '0.22.0'
BRANCH = 'release/v0.22.0'
#: The CPU tests that drive Composer's Trainer: training and evaluation entry points, callbacks, optimizers and
#: schedulers, the registry and the builders.
PATHS = [
    'tests/a_scripts/train',
    'tests/a_scripts/eval',
    'tests/callbacks',
    'tests/optim',
    'tests/test_registry.py',
    'tests/utils/test_builders.py',
]
HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / 'llmfoundry-requirements.txt'
DESELECT_FILE = HERE / 'llmfoundry-deselect.toml'
#: Seconds per test: tests/a_scripts/eval/test_eval.py::test_loader_eval takes about 145 s on 2 busy cores on either
#: side, and went past 300 s in 2 of 4 runs on this machine (on both sides alike in one run).
TEST_TIMEOUT = 900
#: Seconds the client venv's build may take (its first build downloads torch).
VENV_TIMEOUT = 4 * 3600


def load_deselected(path: Path = DESELECT_FILE) -> list[dict[str, str]]:
    """The ``[[deselect]]`` entries (test: a pytest node id, reason: why it cannot run here)."""
    entries = tomllib.loads(path.read_text()).get('deselect', [])
    for i, entry in enumerate(entries):
        if not entry.get('test') or not entry.get('reason'):
            raise SuiteError(f'{path}: deselect #{i + 1} needs a test and a reason')
    return [{'test': str(e['test']), 'reason': str(e['reason'])} for e in entries]


def client_python() -> Path:
    """The client venv's python, from ``python -m clients.llmfoundry.venv`` (which builds the venv if needed)."""
    if not (REPO / 'clients' / 'llmfoundry' / 'venv.py').exists():
        raise SuiteError('clients/llmfoundry/venv.py is missing: the client venv cannot be built')
    log(f'{NAME}: python -m clients.llmfoundry.venv (builds build/client-venv if needed)')
    try:
        proc = subprocess.run([sys.executable, '-m', 'clients.llmfoundry.venv'],
                              cwd=REPO,
                              text=True,
                              stdout=subprocess.PIPE,
                              timeout=VENV_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise SuiteError(f'python -m clients.llmfoundry.venv: no result within {VENV_TIMEOUT} s') from e
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SuiteError(f'python -m clients.llmfoundry.venv failed (exit {proc.returncode}); see its messages above')
    python = Path(lines[-1])
    if not python.exists():
        raise SuiteError(f'python -m clients.llmfoundry.venv printed {python}, which does not exist')
    return python


def install_requirements(python: Path, out: Path) -> None:
    """Installs llmfoundry-requirements.txt into the client venv; its mosaicml, llm-foundry and torch stay."""
    versions = run(
        [
            str(python),
            '-c',
            'import importlib.metadata as m\n'
            'for n in ("mosaicml", "llm-foundry", "torch"): print(n + "==" + m.version(n))',
        ],
        f'reading the versions installed in {python}',
    ).split()
    constraints = out / 'llmfoundry-constraints.txt'
    constraints.write_text('\n'.join(versions) + '\n')
    if not any(v.startswith('llm-foundry==' + VERSION) for v in versions):
        raise SuiteError(
            f'{python} has {versions}, not llm-foundry {VERSION}: rebuild it (python -m '
            'clients.llmfoundry.venv)',
        )
    log(f'{NAME}: pip install -r {REQUIREMENTS.relative_to(REPO)} (kept: {", ".join(versions)})')
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
        'installing the test dependencies of LLM Foundry\'s suite',
        timeout=INSTALL_TIMEOUT)


def prepare(checkout: Path, out: Path, paths: list[str] | None = None, python: Path | None = None) -> Suite:
    """Sets up the run folder, the stand-in tokenizers and the client venv's test dependencies.

    Args:
        checkout: a git checkout of mosaicml/llm-foundry at release/v0.22.0.
        out: the output folder (build/client-tests).
        paths: test paths to run (default: PATHS).
        python: the client venv's python (default: from python -m clients.llmfoundry.venv).

    Returns:
        The suite, with one side for the installed fork and one for upstream's package first on PYTHONPATH.
    """
    checkout = checkout.resolve()
    version_file = checkout / 'llmfoundry' / '_version.py'
    if not (checkout / 'tests' / 'conftest.py').exists() or not version_file.exists():
        raise SuiteError(
            f'{checkout} is not a checkout of mosaicml/llm-foundry (no tests/conftest.py or '
            f'llmfoundry/_version.py); e.g. git clone <mosaicml/llm-foundry> build/llm-foundry && git -C '
            f'build/llm-foundry checkout {BRANCH}',
        )
    if f"__version__ = '{VERSION}'" not in version_file.read_text():
        raise SuiteError(
            f'{checkout} is not llm-foundry {VERSION} (see {version_file}): git -C {checkout} checkout '
            f'{BRANCH}',
        )
    commit, describe = git_describe(checkout)
    python = python or client_python()
    install_requirements(python, out)
    target = composer_suite.upstream_target(Path(sys.executable))
    suite_dir = out / NAME
    # Named llm-foundry: tests/a_scripts/eval/test_eval.py and tests/callbacks/test_eval_gauntlet_callback.py chdir
    # into scripts/ only when the working directory does not end with llm-foundry/scripts.
    run_dir = suite_dir / 'template' / 'llm-foundry'
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    # The working tree's files, not git archive: a checkout of a partial clone may lack some blobs (it then lacks
    # those files, e.g. scripts/eval/local_data/*.jsonl, which none of these tests reads).
    ignore = shutil.ignore_patterns('__pycache__', '.pytest_cache')
    for name in ('tests', 'scripts'):
        shutil.copytree(checkout / name, run_dir / name, ignore=ignore)
    shutil.copy2(checkout / 'pyproject.toml', run_dir / 'pyproject.toml')
    paths = paths or PATHS
    missing = [p for p in paths if not (run_dir / p.split('::')[0]).exists()]
    if missing:
        raise SuiteError(f'{checkout} has no {", ".join(missing)}')
    hf_home = run_dir / 'hf-home'
    log(f'{NAME}: training the stand-in tokenizers (clients/suites/tokenizers.py)')
    run([
        str(python),
        '-m',
        'clients.suites.tokenizers',
        '--corpus',
        str(run_dir / 'tests' / 'assets' / 'text_data.jsonl'),
        str(run_dir / 'scripts' / 'data_prep' / 'example_data' / 'arxiv.jsonl'),
        '--assets',
        str(run_dir / 'tests' / 'assets' / 'tokenizers'),
        '--hub-cache',
        str(hf_home / 'hub'),
    ],
        'training the stand-in tokenizers',
        cwd=REPO)
    rel = lambda p: p.relative_to(REPO) if p.is_relative_to(REPO) else p  # noqa: E731
    return Suite(
        name=NAME,
        title=f'LLM Foundry {VERSION}\'s own tests',
        python=python,
        template=run_dir,
        chunks=paths,
        # LLM Foundry's pyproject.toml addopts apply as they are (--tb=short -m 'not gpu').
        pytest_args=[],
        sides=[Side('fork', []), Side('upstream', [target])],
        checkout=checkout,
        checkout_commit=commit,
        checkout_describe=describe,
        deselected=load_deselected(),
        also_import=['llmfoundry'],
        test_timeout=TEST_TIMEOUT,
        env={
            'HF_HOME': '{run}/hf-home',
            'HF_HUB_CACHE': '{run}/hf-home/hub',
            'HF_HUB_OFFLINE': '1',
            'HF_DATASETS_OFFLINE': '1',
            'TRANSFORMERS_OFFLINE': '1',
            'WANDB_MODE': 'offline',
        },
        notes=[
            'run folder (`llm-foundry`, the name some tests check): a fresh copy, for each pytest run, of the '
            'checkout\'s tests/, scripts/ and pyproject.toml without its llmfoundry/ (the client venv\'s llm-foundry '
            f'{VERSION} from PyPI is tested), with the Hugging Face cache (HF_HOME) inside it',
            f'fork side: PYTHONPATH=<run folder>; upstream side: PYTHONPATH={rel(target)}:<run folder>; the venv\'s '
            'bin/ first on PATH on both',
            'tokenizers: a byte-level BPE (vocabulary 2048) trained on the checkout\'s tests/assets/text_data.jsonl '
            'and scripts/data_prep/example_data/arxiv.jsonl stands in for the fixture assets gpt2 and neox (in '
            'tests/assets/tokenizers, so the fixture downloads nothing) and for the hub tokenizers '
            'EleutherAI/gpt-neox-20b, mosaicml/mpt-7b and bert-base-uncased (in the HF cache '
            'hf-home/hub, read with HF_HUB_OFFLINE=1)',
        ],
    )
