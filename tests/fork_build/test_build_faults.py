"""Build-level faults: each one stops the build with a message that names the cause and what to do, and installs
nothing."""

import shutil
from pathlib import Path

import pytest

from tests.fork_build.conftest import pip_wheel, run_pip


def _install_fails(tmp_path: Path, source: Path, env: dict) -> str:
    target = tmp_path / 'target'
    proc = run_pip('install', '--target', str(target), str(source), env=env)
    assert proc.returncode != 0, proc.stdout
    assert not (target / 'composer').exists()
    return proc.stdout + proc.stderr


def test_truncated_artifact_is_refused(upstream_wheel, tmp_path, repo_copy):
    truncated = tmp_path / 'dist' / upstream_wheel.name
    truncated.parent.mkdir()
    truncated.write_bytes(upstream_wheel.read_bytes()[:upstream_wheel.stat().st_size // 3])  # an interrupted download
    output = _install_fails(tmp_path, repo_copy, {'COMPOSER_UPSTREAM_DIST': str(truncated)})
    assert 'sha256 mismatch' in output and str(truncated) in output
    assert 'Delete it' in output


def test_cached_artifact_of_another_version_is_refused(upstream_sdist, tmp_path, repo_copy, pin):
    # What a cache holds after the pin moved, or a file saved under the pinned name: its content decides.
    cache = tmp_path / 'cache'
    cache.mkdir()
    shutil.copy(upstream_sdist, cache / pin.wheel_name)  # not the pinned wheel's bytes
    output = _install_fails(tmp_path, repo_copy, {'COMPOSER_FORK_CACHE': str(cache), 'COMPOSER_UPSTREAM_DIST': ''})
    assert 'sha256 mismatch' in output and str(cache / pin.wheel_name) in output
    assert 'make refresh' in output  # the remedy when the pin itself changed


def test_artifact_of_another_version_given_offline_names_the_pinned_file(upstream_wheel, tmp_path, repo_copy, pin):
    other = tmp_path / 'dist' / 'mosaicml-0.31.0-py3-none-any.whl'
    other.parent.mkdir()
    shutil.copy(upstream_wheel, other)
    output = _install_fails(tmp_path, repo_copy, {'COMPOSER_UPSTREAM_DIST': str(other)})
    assert f'does not provide {pin.wheel_name}' in output
    assert f'pip download --no-deps mosaicml=={pin.version}' in output


@pytest.mark.parametrize(
    'damage',
    ['not utf-8', 'not an ini file', 'a directory', 'missing'],
)
def test_unreadable_upstream_cfg_stops_the_build(upstream_wheel, tmp_path, repo_copy, damage):
    cfg = repo_copy / 'upstream.cfg'
    if damage == 'not utf-8':
        cfg.write_bytes(b'[upstream]\nversion = \xff\xfe\n')
    elif damage == 'not an ini file':
        cfg.write_text('version: 0.32.1\n')
    elif damage == 'a directory':
        cfg.unlink()
        cfg.mkdir()
    else:
        cfg.unlink()
    out = tmp_path / 'out'
    proc = pip_wheel(repo_copy, out, env={'COMPOSER_UPSTREAM_DIST': str(upstream_wheel)})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'upstream.cfg' in output
    assert ('is missing' if damage == 'missing' else 'cannot be read') in output
    assert 'git checkout -- upstream.cfg' in output
    assert 'Traceback' not in output  # the message, not a stack trace
    assert not list(out.glob('*.whl'))
