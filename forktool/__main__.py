"""Command line of the fork's tooling; the Makefile's targets call it. ``python -m forktool --help``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from forktool import ForkError, build, description, lint, pr, series, topics, upstream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m forktool', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('wheel', help='build the fork wheel')
    p.add_argument('--dest', type=Path, default=upstream.ROOT / 'dist')
    p = sub.add_parser('fetch', help='download and verify the pinned upstream wheel and sdist into the cache')
    p = sub.add_parser(
        'tree',
        help='create the developer tree: upstream, then each topic: its modules, its patches, its tests',
    )
    p.add_argument('--dest', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p = sub.add_parser('export', help='regenerate patches/ from the developer tree')
    p.add_argument('--tree', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p.add_argument('--dest', type=Path, default=series.PATCHES_DIR)
    p = sub.add_parser('check', help='check headers, topics and exact application of every patch to the pinned release')
    p.add_argument('--upstream', type=Path, help='also make every topic branch in a clone of this git checkout')
    p.add_argument(
        '--no-commit-check',
        dest='commits',
        action='store_false',
        help='do not check out every commit of every topic branch (the slow part)',
    )
    p = sub.add_parser(
        'pr',
        help='create one branch per topic (modules, patches, tests, PR-only docs) in an upstream '
        'checkout, and its description in build/pr/<topic>.md',
    )
    p.add_argument('--upstream', type=Path, required=True)
    p.add_argument('--topic', help='only this topic (and the earlier topics it stacks on, unless their branches exist)')
    p.add_argument('--prefix', default=pr.DEFAULT_PREFIX, help='branches are named <prefix>/<topic>')
    p.add_argument(
        '--no-evidence',
        dest='evidence',
        action='store_false',
        help='do not run tests; the descriptions say that no evidence was collected',
    )
    p.add_argument('--out', type=Path, default=upstream.ROOT / 'build' / 'pr', help='where <topic>.md is written')
    p = sub.add_parser('refresh', help='record the pinned version\'s hashes (after a version change) and rebase')
    p.add_argument('--tree', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p = sub.add_parser('target', help='install upstream\'s or the fork\'s package alone (--no-deps) into a directory')
    p.add_argument('which', choices=['upstream', 'fork'])
    p.add_argument('--dest', type=Path, required=True)
    sub.add_parser('version', help='print the fork\'s version')
    p = sub.add_parser(
        'export-upstream-only',
        help='write patches/upstream-only/ from a branch of an upstream checkout',
    )
    p.add_argument('--repo', type=Path, required=True, help='checkout whose commits base..HEAD are the patches')
    p.add_argument('--base', required=True, help='the upstream revision they apply to (e.g. v0.32.1)')
    p.add_argument('--dest', type=Path, default=series.UPSTREAM_ONLY_DIR)
    p = sub.add_parser('lint-upstream', help='run upstream\'s pre-commit checks on the files base..HEAD changes')
    p.add_argument('--repo', type=Path, required=True, help='a git checkout of upstream (or a `make tree` tree)')
    p.add_argument('--base', required=True, help='the upstream revision the branch starts from')
    p.add_argument('--venv', type=Path, default=lint.DEFAULT_VENV, help='where the pinned tools are installed')
    p.add_argument('--python', default=sys.executable, help='interpreter whose packages pyright resolves')
    p.add_argument('--no-pyright', action='store_true')
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ForkError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == 'wheel':
        print(build.build_wheel(args.dest))
    elif args.command == 'fetch':
        for kind in ('wheel', 'sdist'):
            print(upstream.locate(kind))
    elif args.command == 'tree':
        series.make_tree(args.dest)
        print(
            f'{args.dest}: edit upstream files here, commit (one commit per patch, DEP-3 header as the message '
            'body), then `make export`.',
        )
    elif args.command == 'export':
        for name in series.export(args.tree, args.dest):
            print(args.dest / name)
    elif args.command == 'check':
        problems = series.check() + topics.check_topics() + description.check_templates(series.PATCHES_DIR)
        notes: list[str] = []
        if args.commits and not problems:
            commit_problems, notes = pr.check_tree_commits()
            problems += commit_problems
        if args.upstream is not None and not problems:
            checkout_problems, checkout_notes = pr.check_against_checkout(args.upstream.resolve(), commits=args.commits)
            problems += checkout_problems
            notes += checkout_notes
        for note in notes:
            print(f'check-patches: note: {note}')
        for problem in problems:
            print(f'check-patches: {problem}', file=sys.stderr)
        if problems:
            return 1
        print(
            f'check-patches: {len(series.read_series())} patches apply exactly to mosaicml '
            f'{upstream.read_pin().version}; headers complete.',
        )
        if args.upstream is not None:
            head = subprocess.run(['git', 'log', '-1', '--format=%H %cs %s'],
                                  cwd=args.upstream,
                                  capture_output=True,
                                  text=True).stdout.strip()
            print(f'check-patches: every topic applies to {args.upstream} at {head}.')
    elif args.command == 'pr':
        made = pr.make_topic_branches(args.upstream.resolve(), args.topic, args.prefix)
        for branch in made:
            if not branch.created:
                print(f'{args.upstream}: branch {branch.branch} exists; the next topic stacks on it.')
                continue
            md = description.write_description(branch, args.upstream.resolve(), args.out, evidence=args.evidence)
            print(f'{args.upstream}: branch {branch.branch} created on {branch.base}; description: {md}')
        print('Review each branch with `git log -p <base>..<branch>`, then push it.')
    elif args.command == 'refresh':
        _refresh(args.tree)
    elif args.command == 'target':
        print(_install_target(args.which, args.dest))
    elif args.command == 'version':
        print(upstream.read_pin().fork_version)
    elif args.command == 'export-upstream-only':
        for name in series.export_upstream_only(args.repo, args.base, args.dest):
            print(args.dest / name)
    elif args.command == 'lint-upstream':
        problems = lint.lint_upstream(args.repo, args.base, args.python, args.venv, pyright=not args.no_pyright)
        for problem in problems:
            print(f'lint-upstream: {problem}', file=sys.stderr)
        print(f'lint-upstream: {len(problems)} check(s) failed' if problems else 'lint-upstream: all checks passed')
        return 1 if problems else 0
    return 0


def _install_target(which: str, dest: Path) -> Path:
    """Put one package (no dependencies) in ``dest``, to be switched in with ``PYTHONPATH`` over the venv's."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = upstream.locate('wheel') if which == 'upstream' else build.build_wheel(Path(tmp))
        if dest.exists():
            shutil.rmtree(dest)
        pip = [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--disable-pip-version-check']
        subprocess.run(pip + ['--target', str(dest), str(wheel)], check=True)
    return dest


def _refresh(tree: Path) -> None:
    """After editing the pinned version: record the new artifacts' hashes, then rebase the series onto it."""
    pin = upstream.read_pin()
    try:
        upstream.locate('wheel', pin, download=False)
        upstream.locate('sdist', pin, download=False)
    except ForkError:
        dest = upstream.cache_dir() / 'unverified'
        wheel = upstream.download_unverified('wheel', pin.version, dest)
        sdist = upstream.download_unverified('sdist', pin.version, dest)
        upstream.write_pin_hashes(upstream.sha256_of(wheel), upstream.sha256_of(sdist))
        for path in (wheel, sdist):
            path.replace(upstream.cache_dir() / path.name)
        print(f'upstream.cfg: recorded the sha256 of {wheel.name} and {sdist.name}; review and commit it.')
        pin = upstream.read_pin()
    # Rebase: every patch must apply to the new release; then export regenerates them with new line numbers.
    series.make_tree(tree, pin)
    series.export(tree)
    print('patches/ re-exported against mosaicml', pin.version)


if __name__ == '__main__':
    sys.exit(main())
