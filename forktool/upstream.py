"""The pin (``upstream.cfg``) and the pinned upstream artifacts: find, download, verify."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from forktool import ForkError

ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = ROOT / 'upstream.cfg'
DIST_NAME = 'mosaicml'
#: A wheel file, or a directory holding the pinned wheel (and, for ``make tree``/``make pr``, the sdist).
OFFLINE_ENV_VAR = 'COMPOSER_UPSTREAM_DIST'
CACHE_ENV_VAR = 'COMPOSER_FORK_CACHE'


@dataclass(frozen=True)
class Pin:
    version: str
    wheel_sha256: str
    sdist_sha256: str
    label: str

    @property
    def fork_version(self) -> str:
        return f'{self.version}+{self.label}'

    @property
    def wheel_name(self) -> str:
        return f'{DIST_NAME}-{self.version}-py3-none-any.whl'

    @property
    def sdist_name(self) -> str:
        return f'{DIST_NAME}-{self.version}.tar.gz'

    def expected_sha256(self, kind: str) -> str:
        return self.wheel_sha256 if kind == 'wheel' else self.sdist_sha256

    def artifact_name(self, kind: str) -> str:
        return self.wheel_name if kind == 'wheel' else self.sdist_name


def read_pin(path: Path = PIN_FILE) -> Pin:
    parser = configparser.ConfigParser()
    restore = 'Restore it with `git checkout -- upstream.cfg` (or from a clean clone of the fork).'
    try:
        with open(path, encoding='utf-8') as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ForkError(f'{path} is missing: it records the pinned upstream release. {restore}') from None
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise ForkError(f'{path} cannot be read ({type(e).__name__}: {e}). {restore}') from None
    try:
        pin = Pin(
            version=parser['upstream']['version'].strip(),
            wheel_sha256=parser['upstream']['wheel_sha256'].strip().lower(),
            sdist_sha256=parser['upstream']['sdist_sha256'].strip().lower(),
            label=parser['fork']['label'].strip(),
        )
    except KeyError as e:
        raise ForkError(
            f'{path}: missing {e}; it needs [upstream] version, wheel_sha256, sdist_sha256 and [fork] '
            'label.',
        ) from None
    if not re.fullmatch(r'[a-z0-9]+(?:\.[a-z0-9]+)*', pin.label):
        raise ForkError(f'{path}: label {pin.label!r} is not a PEP 440 local version label (e.g. signals.1).')
    return pin


def write_pin_hashes(wheel_sha256: str, sdist_sha256: str, path: Path = PIN_FILE) -> None:
    """Rewrite the two hash lines of the pin file, keeping everything else (comments included) as it is."""
    text = path.read_text(encoding='utf-8')
    text = re.sub(r'(?m)^wheel_sha256 = .*$', f'wheel_sha256 = {wheel_sha256}', text)
    text = re.sub(r'(?m)^sdist_sha256 = .*$', f'sdist_sha256 = {sdist_sha256}', text)
    path.write_text(text, encoding='utf-8')


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'mosaicml-signals-fork'


def verify(path: Path, expected: str) -> Path:
    actual = sha256_of(path)
    if actual != expected:
        raise ForkError(
            f'sha256 mismatch for the upstream artifact {path}\n'
            f'  expected: {expected} (upstream.cfg)\n'
            f'  actual:   {actual}\n'
            'The file is not the pinned upstream release; refusing to build from it. Delete it (or point '
            f'{OFFLINE_ENV_VAR} at a genuine copy). If you changed the pinned version, run `make refresh`.',
        )
    return path


def locate(kind: str, pin: Pin | None = None, download: bool = True) -> Path:
    """Return the verified path of the pinned upstream ``kind`` ('wheel' or 'sdist').

    Looks in ``$COMPOSER_UPSTREAM_DIST`` (a file or a directory), then in the cache, then downloads with pip (so the
    user's index and proxy settings apply) into the cache.
    """
    pin = pin or read_pin()
    name = pin.artifact_name(kind)
    expected = pin.expected_sha256(kind)
    offline = os.environ.get(OFFLINE_ENV_VAR)
    if offline:
        given = Path(offline).expanduser()
        if given.is_dir():
            candidate = given / name
        elif given.is_file() and given.name == name:
            candidate = given
        elif given.is_file():
            candidate = given.parent / name
        else:
            raise ForkError(
                f'{OFFLINE_ENV_VAR}={offline} does not exist. Point it at {name} or at a directory '
                'that holds it.',
            )
        if candidate.is_file():
            return verify(candidate, expected)
        raise ForkError(
            f'{OFFLINE_ENV_VAR}={offline} does not provide {name}. Point it at that file or at a '
            'directory that holds it (download it elsewhere with '
            f'`pip download --no-deps {"--no-binary :all: " if kind == "sdist" else ""}'
            f'{DIST_NAME}=={pin.version}`).',
        )
    cached = cache_dir() / name
    if cached.is_file():
        return verify(cached, expected)
    if not download:
        raise ForkError(f'{name} is not in the cache {cache_dir()} and downloading was not allowed.')
    return verify(_pip_download(kind, pin, cache_dir()), expected)


def _run_pip_download(kind: str, version: str, dest: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check', '-d', dest]
    cmd += ['--only-binary', ':all:'] if kind == 'wheel' else ['--no-binary', ':all:']
    cmd.append(f'{DIST_NAME}=={version}')
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pip_download(kind: str, pin: Pin, dest: Path) -> Path:
    name = pin.artifact_name(kind)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        print(f'forktool: downloading {name} with pip', file=sys.stderr)
        result = _run_pip_download(kind, pin.version, tmp)
        downloaded = Path(tmp) / name
        if result.returncode != 0 or not downloaded.is_file():
            tail = '\n'.join(result.stdout.strip().splitlines()[-6:])
            raise ForkError(
                f'Could not download the pinned upstream {name} with pip:\n{tail}\n'
                f'If this machine is offline, set {OFFLINE_ENV_VAR} to the path of {name} (or of a directory '
                f'holding it), copied from a machine that has it (`pip download --no-deps {DIST_NAME}=={pin.version}`'
                ').',
            )
        # Verify before it enters the cache, so that a bad download is never reused.
        verify(downloaded, pin.expected_sha256(kind))
        final = dest / name
        shutil.move(str(downloaded), final)
    return final


def download_unverified(kind: str, version: str, dest: Path) -> Path:
    """Download a release that is not pinned yet (``make refresh``); pip checks the index's own hash."""
    name = Pin(version=version, wheel_sha256='', sdist_sha256='', label='x').artifact_name(kind)
    if not (dest / name).is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            result = _run_pip_download(kind, version, tmp)
            if result.returncode != 0 or not (Path(tmp) / name).is_file():
                raise ForkError(f'Could not download {name} with pip:\n{result.stdout[-2000:]}')
            shutil.move(str(Path(tmp) / name), dest / name)
    return dest / name
