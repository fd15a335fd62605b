"""Command line of the fork's tooling; the Makefile's targets call it. ``python -m forktool --help``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from forktool import ForkError, build, series, topics, upstream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m forktool', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('wheel', help='build the fork wheel')
    p.add_argument('--dest', type=Path, default=upstream.ROOT / 'dist')
    p = sub.add_parser('fetch', help='download and verify the pinned upstream wheel and sdist into the cache')
    p = sub.add_parser('tree', help='create the developer tree: upstream, one commit per patch, overlay + tests')
    p.add_argument('--dest', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p = sub.add_parser('export', help='regenerate patches/ from the developer tree')
    p.add_argument('--tree', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p.add_argument('--dest', type=Path, default=series.PATCHES_DIR)
    sub.add_parser('check', help='check headers and exact application of every patch to the pinned release')
    p = sub.add_parser('pr', help='create a branch with the series, overlay and tests in an upstream checkout')
    p.add_argument('--upstream', type=Path, required=True)
    p.add_argument('--branch', default='fix-signal-handling-lifecycle')
    p = sub.add_parser('overlay-states', help='write each topic\'s state of composer/ and tests/ (to edit an earlier one)')
    p.add_argument('--dest', type=Path, default=upstream.ROOT / 'build' / 'overlay-states')
    p = sub.add_parser('overlay-export', help='regenerate patches/overlay/ from the (edited) topic states')
    p.add_argument('--states', type=Path, default=upstream.ROOT / 'build' / 'overlay-states')
    p = sub.add_parser('refresh', help='record the pinned version\'s hashes (after a version change) and rebase')
    p.add_argument('--tree', type=Path, default=upstream.ROOT / 'build' / 'tree')
    p = sub.add_parser('target', help='install upstream\'s or the fork\'s package alone (--no-deps) into a directory')
    p.add_argument('which', choices=['upstream', 'fork'])
    p.add_argument('--dest', type=Path, required=True)
    sub.add_parser('version', help='print the fork\'s version')
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
        problems = series.check()
        for problem in problems:
            print(f'check-patches: {problem}', file=sys.stderr)
        if problems:
            return 1
        print(
            f'check-patches: {len(series.read_series())} patches apply exactly to mosaicml '
            f'{upstream.read_pin().version}; headers complete.',
        )
    elif args.command == 'pr':
        branch = series.make_pr_branch(args.upstream.resolve(), args.branch)
        print(f'{args.upstream}: branch {branch} created; review it with `git log -p`, then push it.')
    elif args.command == 'overlay-states':
        for name, state in topics.overlay_states(args.dest).items():
            print(f'{name}: {state}')
    elif args.command == 'overlay-export':
        for path in topics.export_overlay_patches(args.states):
            print(path)
    elif args.command == 'refresh':
        _refresh(args.tree)
    elif args.command == 'target':
        print(_install_target(args.which, args.dest))
    elif args.command == 'version':
        print(upstream.read_pin().fork_version)
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
