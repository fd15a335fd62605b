"""forktool.lint: the generated pre-commit config, the license stand-in, and pre-commit run on small branches.

The branch tests run pre-commit for real: the first run installs the hook environments from PyPI and pyright from npm
into build/lint-venv (about two minutes), later runs reuse them.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forktool import lint

# A git checkout of upstream Composer (the mirror this fork was made with); the comparison with it is skipped without.
UPSTREAM_GIT = Path(os.environ.get('COMPOSER_UPSTREAM_GIT', '/work/.mirror/mosaicml+composer/repo'))
PINS = {
    'ruff': 'ruff==0.2.2',
    'yapf': 'yapf==0.43.0',
    'isort': 'isort==5.12.0',
    'pydocstyle': 'pydocstyle==6.1.1',
    'yamllint': 'yamllint==1.28.0',
    'nbstripout': 'nbstripout==0.5.0',
    'check-ast': 'pre-commit-hooks==4.1.0',
    'trailing-whitespace': 'pre-commit-hooks==4.1.0',
}


def _git(repo, *args):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                   cwd=repo,
                   check=True,
                   capture_output=True)


def _ids(config):
    return [hook['id'] for repo in config['repos'] for hook in repo['hooks']]


def test_the_embedded_config_is_upstreams_v0_32_1_file():
    if not (UPSTREAM_GIT / 'HEAD').exists() and not (UPSTREAM_GIT / '.git').exists():
        pytest.skip(f'no upstream checkout at {UPSTREAM_GIT} (COMPOSER_UPSTREAM_GIT)')
    real = yaml.safe_load(
        subprocess.run(['git', '-C', str(UPSTREAM_GIT), 'show', 'v0.32.1:.pre-commit-config.yaml'],
                       check=True,
                       capture_output=True,
                       text=True).stdout,
    )
    for repo in real['repos']:
        for hook in repo['hooks']:
            hook.pop('description', None)
    assert yaml.safe_load(lint.UPSTREAM_CONFIG) == real


def test_every_hook_becomes_a_local_hook_with_its_pypi_pin():
    config, problems = lint.generate_config(lint.UPSTREAM_CONFIG, python='/venv/bin/python')
    assert problems == []
    assert [repo['repo'] for repo in config['repos']] == ['local']
    hooks = {hook['id']: hook for hook in config['repos'][0]['hooks']}
    assert list(hooks) == _ids(yaml.safe_load(lint.UPSTREAM_CONFIG)) and len(hooks) == 31
    for hook_id, pin in PINS.items():
        assert hooks[hook_id]['language'] == 'python' and hooks[hook_id]['additional_dependencies'][0] == pin
    # The config's args and settings win over the manifest's, as in pre-commit; the rest comes from the manifest.
    assert hooks['ruff']['entry'] == 'ruff check --force-exclude' and hooks['ruff']['types_or'] == ['python', 'pyi']
    assert hooks['ruff']['args'] == ['--fix', '--exit-non-zero-on-fix']
    assert hooks['yapf']['args'] == ['-i', '-vv', '-p'] and hooks['yapf']['additional_dependencies'][1:] == ['toml']
    assert hooks['isort']['args'] == ['--filter-files'] and hooks['isort']['require_serial']
    assert hooks['pydocstyle']['exclude'].startswith('(?:tests|.ci|')
    assert hooks['debug-statements']['entry'] == 'debug-statement-hook'
    assert hooks['check-executables-have-shebangs']['types'] == ['text', 'executable']
    assert hooks['pretty-format-json']['args'][0] == '--autofix'
    assert hooks['insert-license']['language'] == 'system' and hooks['insert-license']['types'] == ['python']
    assert hooks['insert-license']['entry'].startswith('/venv/bin/python -c ')
    assert hooks['pyright'] == {**yaml.safe_load(lint.UPSTREAM_CONFIG)['repos'][-2]['hooks'][0]}
    assert hooks['trufflehog']['language'] == 'fail' and 'trufflehog' in lint.SKIPPED
    assert config['exclude'] == r'.ci\/release_tests\/.*'


def test_a_hook_or_rev_forktool_does_not_know_is_a_finding():
    config = lint.UPSTREAM_CONFIG.replace('rev: v0.2.2', 'rev: v0.3.0')
    config = config.replace('  - {id: check-xml}\n', '  - {id: check-xml}\n  - {id: no-commit-to-branch}\n')
    config += '- {repo: https://github.com/psf/black, rev: 24.1.0, hooks: [{id: black}]}\n'
    generated, problems = lint.generate_config(config)
    assert len(problems) == 3, problems
    assert 'hook ruff of https://github.com/astral-sh/ruff-pre-commit at v0.3.0' in problems[0]
    assert 'no-commit-to-branch' in problems[1] and 'black' in problems[2]
    assert 'ruff' not in _ids(generated) and 'check-xml' in _ids(generated)


def test_license_stand_in_accepts_what_insert_license_accepts(tmp_path, capsys):
    header = tmp_path / 'FILE_HEADER'
    header.write_text(lint.LICENSE_TEXT)
    f = tmp_path / 'm.py'
    args = ['--license-filepath', str(header), '--comment-style', '#', '--allow-past-years', str(f)]
    for text in (
        '# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n\n"""Doc."""\n',
        '#!/usr/bin/env python\n# Copyright 2021-2026 MosaicML Composer authors\n'
        '# SPDX-License-Identifier: Apache-2.0\n',
    ):
        f.write_text(text)
        assert lint.license_hook(args) == 0, text
    for text in (
        '# Copyright 2024 Someone else\n# SPDX-License-Identifier: Apache-2.0\n',
        '"""Doc."""\n# Copyright 2024 MosaicML Composer authors\n',
        '\n' * 5 + '# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n',
    ):
        f.write_text(text)
        assert lint.license_hook(args) == 1, text
    f.write_text('# Copyright 2022 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n')
    assert lint.license_hook(args[:-2] + [str(f)]) == 1  # without --allow-past-years the year must match
    assert 'm.py: no license header' in capsys.readouterr().out


def test_pre_commit_report_is_split_per_hook_in_config_order():
    hooks = [{'id': 'a', 'name': 'alpha'}, {'id': 'b', 'name': 'beta'}, {'id': 'c', 'name': 'gamma'}]
    output = (
        '[INFO] Installing environment for local.\nalpha....................................Passed\n'
        'beta.....................................Failed\n- hook id: b\n\nx.py:1: bad\n'
        'gamma...........................(no files to check)Skipped\n'
        'All changes made by hooks:\ndiff\n'
    )
    assert lint.split_report(output, hooks) == {
        'a': ('Passed', ''),
        'b': ('Failed', '- hook id: b\n\nx.py:1: bad'),
        'c': ('no files', ''),
    }


BASE_PYPROJECT = """\
[tool.pyright]
include = ["composer/**"]
reportUnusedImport = "error"

[tool.pydocstyle]
convention = "google"
"""
HEADER = '# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n'


@pytest.fixture
def branch(tmp_path):
    """A git repository shaped like upstream's: ``base`` has a module with a type error already, and no config."""
    repo = tmp_path / 'repo'
    (repo / 'composer' / 'core').mkdir(parents=True)
    (repo / 'pyproject.toml').write_text(BASE_PYPROJECT)
    # A package named as the one the venv has installed (the fork), with a module the installed one has too.
    for init in ('composer/__init__.py', 'composer/core/__init__.py'):
        (repo / init).write_text(HEADER + '"""Package."""\n')
    (repo / 'composer' / 'core' / 'engine.py').write_text(HEADER + '"""Engine."""\n\nONLY_IN_THIS_TREE = 1\n')
    (repo / 'composer' / 'py.typed').write_text('')  # as upstream's (pyright prefers a typed package)
    (repo / 'composer' / 'old.py').write_text(HEADER + '"""Old."""\n\nx: int = \'already wrong\'\n')
    _git(repo, 'init', '-q', '-b', 'main')
    _git(repo, 'add', '-A')
    _git(repo, 'commit', '-qm', 'base')
    _git(repo, 'tag', 'base')
    return repo


def test_pre_commit_passes_a_clean_branch_and_ignores_what_the_base_already_had(branch):
    # pyright must see this tree's composer.core.engine, not the installed one (which has no such name).
    (branch / 'composer' / 'new.py').write_text(
        HEADER + (
            '"""New."""\n\nfrom composer.core.engine import ONLY_IN_THIS_TREE\n\n\n'
            'def f() -> int:\n    """F."""\n    return ONLY_IN_THIS_TREE\n'
        ),
    )
    (branch / 'composer' / 'old.py').write_text(HEADER + '"""Old, changed."""\n\nx: int = \'already wrong\'\n')
    _git(branch, 'add', '-A')
    _git(branch, 'commit', '-qm', 'clean change')
    lines = []
    assert lint.lint_upstream(branch, 'base', python=sys.executable, log=lines.append) == [], lines
    assert '  pyright: ok (pre-commit fails it at HEAD with 1 errors and warnings and at the base with 1: 0 new)' \
        in lines, lines
    assert '  ruff: ok' in lines and '  insert-license: ok' in lines and '  check-json: no files' in lines, lines
    assert any(line.startswith('  trufflehog: skipped: ') for line in lines), lines


def test_pre_commit_fails_a_branch_as_upstreams_ci_would(branch):
    (branch / 'composer' / 'new.py').write_text(
        '"""New."""\n\nimport os\n\ny: str = 1\nz = "double"  \n',
    )  # no license header, an unused import, a type error, double quotes, trailing whitespace
    (branch / 'run.sh').write_text('#!/bin/sh\necho hi\n')  # a shebang, but not executable
    (branch / 'data.json').write_text('{"a": 1,\n"b": [1, 2]}\n')  # not indented as pretty-format-json wants
    (branch / 'page.rst').write_text('A longer title\n=====\n\nText.\n')  # docutils: underline too short
    _git(branch, 'add', '-A')
    _git(branch, 'commit', '-qm', 'bad change')
    (branch / 'composer' / 'new.py').write_text(HEADER + '"""Fixed, but not committed: HEAD is linted."""\n')
    problems = lint.lint_upstream(branch, 'base', python=sys.executable, log=lambda *_: None)
    by_hook = {p.split(':', 1)[0]: p for p in problems}
    assert set(by_hook) == {
        'ruff',
        'yapf',  # the trailing whitespace: fixed, so trailing-whitespace, which runs later, passes
        'check-shebang-scripts-are-executable',
        'pretty-format-json',
        'double-quote-string-fixer',
        'insert-license',
        'pyright',
        'the changes the fixers made',
        'rst (docutils)',
    }, problems
    assert 'page.rst:2: (WARNING/2) Title underline too short.' in by_hook['rst (docutils)']
    assert 'composer/new.py: no license header' in by_hook['insert-license']
    assert 'run.sh' in by_hook['check-shebang-scripts-are-executable']
    assert "-z = \"double\"  \n+z = 'double'" in by_hook['the changes the fixers made']
    # pyright runs after ruff has removed the unused import, as in upstream's CI; the base's error is not new.
    assert by_hook['pyright'].splitlines()[1:] == [
        '  composer/new.py: error: Expression of type "Literal[1]" cannot be assigned to declared type "str" '
        '"Literal[1]" is incompatible with "str" (reportGeneralTypeIssues)',
    ]
    # The fixers ran in a clone: the checkout is as it was.
    assert (branch / 'composer' / 'new.py').read_text().startswith(HEADER)


def test_the_docs_build_installs_the_dev_extra_and_tells_the_networks_warnings_apart():
    setup = "extra_deps = {}\nextra_deps['base'] = []\nextra_deps['dev'] = ['sphinx==4.4.0', 'docutils==0.17.1']\n"
    assert lint.docs_requirements(setup) == ['sphinx==4.4.0', 'docutils==0.17.1']
    with pytest.raises(lint.ForkError, match='dev'):
        lint.docs_requirements("extra_deps = {'all': []}\n")
    offline = (
        'WARNING: failed to reach any of the inventories with the following issues:',
        'composer/trainer/trainer.py:docstring of composer.trainer.trainer.Trainer:210: WARNING: unknown document: '
        'coolname:index',
        'composer/utils/object_store/s3_object_store.py:docstring of S3ObjectStore:10: WARNING: undefined label: '
        'boto3:guide_retries',
    )
    assert all(lint.OFFLINE_WARNING.search(w) for w in offline)
    for page in (
        'docs/source/notes/signal_handling.rst:12: WARNING: undefined label: preemption',
        'docs/source/index.rst:40: WARNING: toctree contains reference to nonexisting document notes/x',
        'docs/source/notes/x.rst:3: WARNING: Title underline too short.',
    ):
        assert not lint.OFFLINE_WARNING.search(page), page
