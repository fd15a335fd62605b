"""Build the fork's wheel: the verified upstream wheel, the series applied, the fork's new modules added, the version labelled.

The upstream wheel is the base, so the fork's metadata is upstream's, byte for byte, except the ``Version:`` line:
same Requires-Dist (every extra), Requires-Python, entry points and package data. Everything happens in a temporary
directory; only a complete wheel is moved to the destination, so a failure never leaves a half-patched package.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from forktool import ForkError
from forktool.series import apply_series, copy_files, own_files
from forktool.upstream import DIST_NAME, ROOT, Pin, locate, read_pin

VERSION_FILE = 'composer/_version.py'


def build_wheel(wheel_directory: Path, pin: Optional[Pin] = None) -> Path:
    """Build the fork's wheel into ``wheel_directory`` and return its path."""
    pin = pin or read_pin()
    upstream_wheel = locate('wheel', pin)
    wheel_directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='composer-fork-build-') as tmp:
        stage = Path(tmp) / 'stage'
        with zipfile.ZipFile(upstream_wheel) as zf:
            zf.extractall(stage)
        apply_series(stage)
        copy_files([(src, rel) for src, rel in own_files() if rel.startswith('composer/')], stage)
        _label_version(stage, pin)
        out = Path(tmp) / 'out'
        out.mkdir()
        pack = [sys.executable, '-m', 'wheel', 'pack', '--dest-dir', str(out), str(stage)]
        result = subprocess.run(pack, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        built = list(out.glob('*.whl'))
        if result.returncode != 0 or len(built) != 1:
            raise ForkError(f'`wheel pack` failed:\n{result.stdout}')
        final = wheel_directory / built[0].name
        shutil.move(str(built[0]), final)
    return final


def _label_version(stage: Path, pin: Pin) -> None:
    """Give the package and its metadata the fork's version, ``<upstream>+<label>``, keeping them consistent."""
    old_info = stage / f'{DIST_NAME}-{pin.version}.dist-info'
    if not old_info.is_dir():
        raise ForkError(f'The upstream wheel has no {old_info.name}; is upstream.cfg pinned to this wheel?')
    new_info = stage / f'{DIST_NAME}-{pin.fork_version}.dist-info'
    old_info.rename(new_info)
    (new_info / 'RECORD').unlink()  # `wheel pack` writes a new one
    _replace_once(new_info / 'METADATA', rf'(?m)^Version: {re.escape(pin.version)}$', f'Version: {pin.fork_version}')
    _replace_once(
        stage / VERSION_FILE,
        rf"(?m)^__version__ = '{re.escape(pin.version)}'$",
        f"__version__ = '{pin.fork_version}'",
    )


def _replace_once(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text(encoding='utf-8')
    new_text, count = re.subn(pattern, replacement, text)
    if count != 1:
        raise ForkError(f'{path.name}: expected exactly one line matching {pattern!r}, found {count}.')
    path.write_text(new_text, encoding='utf-8')


def build_sdist(sdist_directory: Path) -> Path:
    """A source archive of this repository (what ``setup.py`` needs to build the wheel again)."""
    pin = read_pin()
    name = f'{DIST_NAME}-{pin.fork_version}'
    files = ['setup.py', 'pyproject.toml', 'upstream.cfg', 'README.md', 'CHANGELOG.md']
    files += [
        p.relative_to(ROOT).as_posix()
        for top in ('forktool', 'patches', 'composer')
        for p in sorted((ROOT / top).rglob('*'))
        if p.is_file() and '__pycache__' not in p.parts
    ]
    sdist_directory.mkdir(parents=True, exist_ok=True)
    target = sdist_directory / f'{name}.tar.gz'
    with tarfile.open(target, 'w:gz', format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            tar.add(ROOT / rel, arcname=f'{name}/{rel}', recursive=False)
        info = tarfile.TarInfo(f'{name}/PKG-INFO')
        data = f'Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {pin.fork_version}\n'.encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return target
