"""The fork's build: drop-in metadata, verified artifact, all-or-nothing patching, and the maintainer tooling."""

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

from forktool import series
from tests.fork_build.conftest import ROOT, pip_wheel, run_pip


def _dist_info(zf: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in zf.namelist() if n.endswith(f'.dist-info/{name}')]
    return zf.read(path).decode()


def _headers(metadata: str):
    message = email.parser.Parser().parsestr(metadata)
    return [(k, v) for k, v in message.items()], message.get_payload()


def test_metadata_equals_upstream_except_version(upstream_wheel, fork_wheel, pin):
    with zipfile.ZipFile(upstream_wheel) as up, zipfile.ZipFile(fork_wheel) as ours:
        up_headers, up_description = _headers(_dist_info(up, 'METADATA'))
        our_headers, our_description = _headers(_dist_info(ours, 'METADATA'))
        assert ('Version', pin.version) in up_headers
        assert ('Version', pin.fork_version) in our_headers
        assert [h for h in our_headers if h[0] != 'Version'] == [h for h in up_headers if h[0] != 'Version']
        assert our_description == up_description
        # Requires-Dist with every extra, Requires-Python and the console scripts are part of the comparison above
        # and below; spot-check that they really are there.
        names = [k for k, _ in our_headers]
        assert names.count('Requires-Dist') > 20 and 'Requires-Python' in names and 'Provides-Extra' in names
        assert _dist_info(ours, 'entry_points.txt') == _dist_info(up, 'entry_points.txt')
        for script in ('composer =', 'composer_collect_env =', 'composer_validate_remote_path ='):
            assert script in _dist_info(ours, 'entry_points.txt')
        assert _dist_info(ours, 'WHEEL') == _dist_info(up, 'WHEEL')
        assert fork_wheel.name == f'mosaicml-{pin.fork_version}-py3-none-any.whl'

        # Same files (package data included), plus the fork's new modules; only patched files and the version differ.
        up_files = {n for n in up.namelist() if '.dist-info/' not in n}
        our_files = {n for n in ours.namelist() if '.dist-info/' not in n}
        new_modules = {rel for _, rel in series.own_files() if rel.startswith('composer/')}
        assert new_modules and our_files == up_files | new_modules
        patched = {f for p in series.read_series() for f in p.files()} | {'composer/_version.py'}
        changed = {n for n in up_files if up.read(n) != ours.read(n)}
        assert changed == patched
        assert f"__version__ = '{pin.fork_version}'" in ours.read('composer/_version.py').decode()


def test_tampered_artifact_is_refused_and_nothing_is_installed(upstream_wheel, tmp_path):
    tampered_dir = tmp_path / 'dist'
    tampered_dir.mkdir()
    data = bytearray(upstream_wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tampered_dir / upstream_wheel.name
    tampered.write_bytes(bytes(data))
    target = tmp_path / 'target'
    proc = run_pip('install', '--target', str(target), str(ROOT), env={'COMPOSER_UPSTREAM_DIST': str(tampered)})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'sha256 mismatch' in output and str(tampered) in output
    from forktool.upstream import read_pin, sha256_of
    assert read_pin().wheel_sha256 in output and sha256_of(tampered) in output
    assert not (target / 'composer').exists()


def test_offline_without_artifact_names_the_offline_variable(repo_copy, tmp_path):
    env = {
        'COMPOSER_FORK_CACHE': str(tmp_path / 'empty-cache'),
        'PIP_NO_INDEX': '1',
        'PIP_FIND_LINKS': '',
        'COMPOSER_UPSTREAM_DIST': '',
    }
    proc = pip_wheel(repo_copy, tmp_path / 'out', env=env)
    assert proc.returncode != 0
    assert 'COMPOSER_UPSTREAM_DIST' in proc.stdout + proc.stderr


def test_patch_that_does_not_apply_fails_the_build_with_its_name(repo_copy, tmp_path, upstream_wheel):
    (name,) = [n for n in (repo_copy / 'patches' / 'series').read_text().split() if '0002' in n]
    patch = repo_copy / 'patches' / name
    text = patch.read_text()
    assert ' from composer.utils import ensure_tuple\n' in text
    patch.write_text(
        text.replace(' from composer.utils import ensure_tuple\n', ' from composer.utils import nothing\n'),
    )
    out = tmp_path / 'out'
    proc = pip_wheel(repo_copy, out, env={'COMPOSER_UPSTREAM_DIST': str(upstream_wheel)})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert name in output
    assert 'composer/core/engine.py' in output
    assert 'patch does not apply' in output  # git apply's own reason
    assert not list(out.glob('*.whl'))


def test_export_after_tree_reproduces_patches_byte_for_byte(tmp_path):
    tree = tmp_path / 'tree'
    series.make_tree(tree)
    log = subprocess.run(['git', 'log', '--reverse', '--format=%s', 'upstream..HEAD'],
                         cwd=tree,
                         capture_output=True,
                         text=True)
    subjects = log.stdout.splitlines()
    assert [s for s in subjects if s in {p.subject for p in series.read_series()}
           ] == [p.subject for p in series.read_series()]
    exported = tmp_path / 'patches'
    shutil.copytree(series.PATCHES_DIR, exported)
    for path in exported.glob('*.patch'):
        path.unlink()
    (exported / series.SERIES_FILE).unlink()
    root = tmp_path / 'root'
    series.export(tree, exported, root=root)
    # What export writes: the series file and the patches (not patches/topics, pr/ or upstream-only/) ...
    originals = sorted(p.name for p in series.PATCHES_DIR.iterdir())
    assert sorted(p.name for p in exported.iterdir()) == originals
    for name in originals:
        if (series.PATCHES_DIR / name).is_file():
            assert (exported / name).read_bytes() == (series.PATCHES_DIR / name).read_bytes(), name
    # ... and the topics' own files, as they are in the repository.
    for src, rel in series.own_files():
        assert (root / rel).read_bytes() == src.read_bytes(), rel
    # Idempotent: exporting an unchanged tree again changes nothing.
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in exported.iterdir() if p.is_file()}
    series.export(tree, exported, root=root)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in exported.iterdir() if p.is_file()} == before


def test_check_patches_is_clean():
    # Every commit of every topic branch is checked by `make check-patches` (CI runs it), and the check itself is
    # tested in test_topics.py: here only the fast part.
    proc = subprocess.run([sys.executable, '-m', 'forktool', 'check', '--no-commit-check'],
                          cwd=ROOT,
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def _throwaway_upstream(sdist: Path, dest: Path) -> Path:
    series.extract_sdist(sdist, dest)
    for args in (['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'upstream']):
        subprocess.run(['git', *args], cwd=dest, check=True, env={**os.environ, **series._GIT_ENV})
    return dest


# The pull-request branches (one per topic) are tested in test_topics.py.


def test_pr_refuses_a_dirty_checkout(upstream_sdist, tmp_path):
    repo = _throwaway_upstream(upstream_sdist, tmp_path / 'upstream')
    (repo / 'composer' / 'core' / 'engine.py').write_text('# local edit\n')
    proc = subprocess.run([
        sys.executable,
        '-m',
        'forktool',
        'pr',
        '--upstream',
        str(repo),
        '--no-evidence',
        '--out',
        str(tmp_path / 'md'),
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert 'uncommitted changes' in proc.stderr
    branches = subprocess.run(['git', 'branch', '--format=%(refname:short)'], cwd=repo, capture_output=True,
                              text=True).stdout.split()
    assert branches == ['main']


def test_installed_fork_imports_and_console_script_runs(pin):
    from importlib.metadata import distribution
    dist = distribution('mosaicml')
    assert dist.version == pin.fork_version, 'run `make install` first: the installed mosaicml is not this fork'
    import composer
    assert composer.__version__ == pin.fork_version
    # Installed into the environment's site-packages, not used from this repository's composer/ directory.
    site_packages = Path(sysconfig.get_paths()['purelib']).resolve()
    assert Path(composer.__file__).resolve().parent == site_packages / 'composer'
    assert (site_packages / 'composer' / 'utils' / 'signal_handling.py').is_file()
    direct_url = json.loads(dist.read_text('direct_url.json') or '{}')
    assert not direct_url.get('dir_info', {}).get('editable', False)
    bindir = Path(sys.executable).parent
    for script in ('composer', 'composer_collect_env', 'composer_validate_remote_path'):
        assert (bindir / script).exists(), script
    proc = subprocess.run([str(bindir / 'composer'), '--help'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'usage' in proc.stdout.lower() and '--nproc' in proc.stdout


def test_sdist_contains_what_the_build_needs(tmp_path):
    from forktool.build import build_sdist
    sdist = build_sdist(tmp_path)
    with tarfile.open(sdist) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    assert {'setup.py', 'pyproject.toml', 'upstream.cfg', 'patches/series', 'PKG-INFO'} <= names
    assert {rel for _, rel in series.own_files() if rel.startswith('composer/')} <= names


def test_pip_install_from_git_url_of_a_clean_clone(tmp_path, upstream_wheel, pin):
    if not (ROOT / '.git').exists():
        pytest.skip('the repository is not a git checkout')
    clone = tmp_path / 'clone'
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True)
    target = tmp_path / 'target'
    proc = run_pip(
        'install',
        '--target',
        str(target),
        f'mosaicml @ git+file://{clone}',
        env={'COMPOSER_UPSTREAM_DIST': str(upstream_wheel)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / f'mosaicml-{pin.fork_version}.dist-info').is_dir()
    assert (target / 'composer' / 'utils' / 'signal_handling.py').is_file()


def test_readme_names_the_version_that_the_build_produces(pin):
    """upstream.cfg is the one source of the version: every `<version>+signals.<n>` in the README must be it."""
    named = set(re.findall(r'\b\d+\.\d+\.\d+\+signals\.\d+\b', (ROOT / 'README.md').read_text(encoding='utf-8')))
    assert named == {pin.fork_version}, f'README.md names {sorted(named)}; upstream.cfg gives {pin.fork_version}'
