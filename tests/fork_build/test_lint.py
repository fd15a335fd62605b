"""forktool.lint: the license check, the changed-file list, the hooks' selection, and the hooks run on a branch."""

import subprocess
import sys

import pytest

from forktool import lint


def _git(repo, *args):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                   cwd=repo,
                   check=True,
                   capture_output=True)


def test_license_header_as_upstreams_insert_license_hook_accepts_it(tmp_path):
    f = tmp_path / 'm.py'
    f.write_text('# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n\n"""Doc."""\n')
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text(
        '#!/usr/bin/env python\n# Copyright 2022 MosaicML Composer authors\n'
        '# SPDX-License-Identifier: Apache-2.0\n',
    )  # --allow-past-years; not on the first line
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('# Copyright 2021-2026 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n')
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('# Copyright 2024 Someone else\n# SPDX-License-Identifier: Apache-2.0\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('"""Doc."""\n# Copyright 2024 MosaicML Composer authors\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('\n' * 5 + '# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)  # the hook looks at the first 5 lines only


def test_hook_exclusions_are_upstreams():
    assert lint.PYDOCSTYLE_EXCLUDE.search('tests/signal_handling/test_flag.py')
    assert lint.PYDOCSTYLE_EXCLUDE.search('composer/trainer/activation_checkpointing.py')
    assert not lint.PYDOCSTYLE_EXCLUDE.search('composer/utils/signal_handling.py')
    assert lint.GLOBAL_EXCLUDE.search('.ci/release_tests/x.py')


def test_changed_files_are_added_or_modified_since_the_merge_base(tmp_path):
    _git(tmp_path, 'init', '-q', '-b', 'main')
    for name in ('keep.py', 'change.py', 'remove.py', 'move.py'):
        (tmp_path / name).write_text(f'# {name}\n')
    _git(tmp_path, 'add', '-A')
    _git(tmp_path, 'commit', '-qm', 'base')
    _git(tmp_path, 'tag', 'base')
    (tmp_path / 'change.py').write_text('# changed\n')
    (tmp_path / 'remove.py').unlink()
    (tmp_path / 'move.py').rename(tmp_path / 'moved.py')
    (tmp_path / 'new.rst').write_text('Title\n=====\n')
    _git(tmp_path, 'add', '-A')
    _git(tmp_path, 'commit', '-qm', 'branch')
    assert sorted(lint.changed_files(tmp_path, 'base')) == ['change.py', 'moved.py', 'new.rst']


# The skeleton of upstream's .pre-commit-config.yaml at v0.32.1 (and main 640518880): its repositories, revisions
# and hook ids, in order, with a commented-out repository as upstream has one.
UPSTREAM_CONFIG = """\
repos:
- repo: https://github.com/astral-sh/ruff-pre-commit
  rev: v0.2.2
  hooks:
  - id: ruff
- repo: https://github.com/google/yapf
  rev: v0.43.0
  hooks:
  - id: yapf
- repo: https://github.com/pycqa/isort
  hooks:
  - id: isort
  rev: 5.12.0
# -   repo: https://github.com/pycqa/pylint
#     hooks:
#         - id: pylint
- repo: https://github.com/PyCQA/pydocstyle
  hooks:
  - id: pydocstyle
  rev: 6.1.1
- repo: https://github.com/adrienverge/yamllint.git
  rev: v1.28.0
  hooks:
  - id: yamllint
- repo: https://github.com/pre-commit/pre-commit-hooks
  rev: v4.1.0
  hooks:
  - id: check-added-large-files
  - id: check-ast
  - id: check-builtin-literals
  - id: check-case-conflict
  - id: check-docstring-first
  - id: check-executables-have-shebangs
  - id: check-json
  - id: check-shebang-scripts-are-executable
  - id: pretty-format-json
  - id: check-merge-conflict
  - id: check-symlinks
  - id: check-toml
  - id: check-vcs-permalinks
  - id: check-xml
  - id: check-yaml
  - id: debug-statements
  - id: destroyed-symlinks
  - id: double-quote-string-fixer
  - id: end-of-file-fixer
  - id: fix-byte-order-marker
  - id: mixed-line-ending
  - id: trailing-whitespace
- repo: https://github.com/Lucas-C/pre-commit-hooks
  rev: v1.5.4
  hooks:
  - id: insert-license
- repo: https://github.com/kynan/nbstripout
  rev: 0.5.0
  hooks:
  - id: nbstripout
- repo: local
  hooks:
  - id: pyright
    additional_dependencies: ["pyright@1.1.310"]
- repo: https://github.com/trufflesecurity/trufflehog.git
  rev: v3.40.0
  hooks:
  - id: trufflehog
"""


def test_every_hook_of_upstreams_config_is_run_or_said_not_to_be():
    parsed = lint.config_hooks(UPSTREAM_CONFIG)
    ids = [i for _, _, hook_ids in parsed for i in hook_ids]
    assert 'pylint' not in ids and len(ids) == 31
    assert [h.id for h in lint.HOOKS] == [i for i in ids if i not in lint.NOT_RUN]
    assert {url: rev for url, rev, _ in parsed} == lint.PINNED_REVS


def test_a_changed_config_upstream_is_reported(tmp_path):
    _git(tmp_path, 'init', '-q', '-b', 'main')
    config = UPSTREAM_CONFIG.replace('rev: v0.2.2', 'rev: v0.3.0')
    config = config.replace('  - id: check-xml\n', '  - id: check-xml\n  - id: no-commit-to-branch\n')
    (tmp_path / '.pre-commit-config.yaml').write_text(config)
    _git(tmp_path, 'add', '-A')
    _git(tmp_path, 'commit', '-qm', 'config')
    problems = lint.check_config(tmp_path, log=lambda *_: None)
    assert len(problems) == 2
    assert "ruff-pre-commit is at 'v0.3.0', forktool runs 'v0.2.2'" in problems[0]
    assert 'no-commit-to-branch' in problems[1] and 'pre-commit-hooks' in problems[1]
    (tmp_path / '.pre-commit-config.yaml').write_text(UPSTREAM_CONFIG)
    _git(tmp_path, 'commit', '-qam', 'back')
    assert lint.check_config(tmp_path, log=lambda *_: None) == []


def test_hooks_get_the_files_of_their_types():
    hooks = {h.id: h for h in lint.HOOKS}
    py, script = {'file', 'text', 'python', 'non-executable'}, {'file', 'text', 'shell', 'executable'}
    assert hooks['ruff'].selects('composer/x.py', py) and not hooks['ruff'].selects('run.sh', script)
    assert hooks['check-executables-have-shebangs'].selects('run.sh', script)
    assert not hooks['check-executables-have-shebangs'].selects('composer/x.py', py)
    assert not hooks['pydocstyle'].selects('tests/signal_handling/test_flag.py', py)
    assert hooks['trailing-whitespace'].selects('docs/source/notes/x.rst', {'file', 'text', 'rst'})
    assert not hooks['check-json'].selects('composer/x.py', py)


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
    """A git repository shaped like upstream's: ``base`` has a module with a type error already."""
    repo = tmp_path / 'repo'
    (repo / 'composer').mkdir(parents=True)
    (repo / 'pyproject.toml').write_text(BASE_PYPROJECT)
    # A package named as the one the venv has installed (the fork), with a module the installed one has too.
    (repo / 'composer' / 'core').mkdir()
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


def test_the_hooks_pass_a_clean_branch_and_ignore_what_the_base_already_had(branch):
    # pyright must see this tree's composer.core.engine, not the installed one (which has no such name).
    new = HEADER + (
        '"""New."""\n\nfrom composer.core.engine import ONLY_IN_THIS_TREE\n\n\n'
        'def f() -> int:\n    """F."""\n    return ONLY_IN_THIS_TREE\n'
    )
    (branch / 'composer' / 'new.py').write_text(new)
    _git(branch, 'add', '-A')
    _git(branch, 'commit', '-qm', 'clean change')
    lines = []
    assert lint.lint_upstream(branch, 'base', python=sys.executable, log=lines.append) == []
    assert any(line.startswith('  pyright 1.1.310: ok') and '0 new' in line for line in lines), lines


def test_the_hooks_find_what_upstreams_pre_commit_would(branch):
    (branch / 'composer' / 'new.py').write_text(
        '"""New."""\n\nimport os\n\ny: str = 1\nz = "double"  \n',
    )  # no license header, an unused import, a type error, double quotes, trailing whitespace
    (branch / 'run.sh').write_text('#!/bin/sh\necho hi\n')  # a shebang, but not executable
    (branch / 'data.json').write_text('{"a": 1,\n"b": [1, 2]}\n')  # not indented as pretty-format-json wants
    _git(branch, 'add', '-A')
    _git(branch, 'commit', '-qm', 'bad change')
    problems = lint.lint_upstream(branch, 'base', python=sys.executable, log=lambda *_: None)
    by_hook = {p.split(':', 1)[0]: p for p in problems}
    assert set(by_hook) == {
        'ruff',
        'yapf',  # the trailing whitespace
        'check-shebang-scripts-are-executable',
        'pretty-format-json',
        'double-quote-string-fixer',
        'trailing-whitespace',
        'insert-license',
        'pyright',
    }, problems
    assert 'composer/new.py' in by_hook['insert-license']
    assert 'run.sh' in by_hook['check-shebang-scripts-are-executable']
    pyright_lines = by_hook['pyright'].splitlines()[1:]
    assert all('composer/new.py' in line for line in pyright_lines) and len(pyright_lines) == 2, pyright_lines
    # A tracked file changed and not committed: the git hooks would see it.
    (branch / 'run.sh').chmod(0o755)
    with pytest.raises(lint.ForkError, match='uncommitted changes'):
        lint.lint_upstream(branch, 'base', python=sys.executable, log=lambda *_: None)


def test_a_symlink_the_branch_turns_into_a_file_is_reported(tmp_path):
    _git(tmp_path, 'init', '-q', '-b', 'main')
    (tmp_path / 'target.txt').write_text('x\n')
    (tmp_path / 'link.txt').symlink_to('target.txt')
    (tmp_path / 'kept.txt').symlink_to('target.txt')
    _git(tmp_path, 'add', '-A')
    _git(tmp_path, 'commit', '-qm', 'base')
    _git(tmp_path, 'tag', 'base')
    (tmp_path / 'link.txt').unlink()
    (tmp_path / 'link.txt').write_text('target.txt')  # what a checkout without symlink support leaves
    (tmp_path / 'kept.txt').unlink()
    (tmp_path / 'kept.txt').symlink_to('link.txt')  # still a symlink: fine
    _git(tmp_path, 'add', '-A')
    _git(tmp_path, 'commit', '-qm', 'branch')
    assert lint.destroyed_symlinks(tmp_path, 'base') == ['link.txt']
