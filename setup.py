"""PEP 517 build backend of the signal-handling fork of MosaicML Composer (``pyproject.toml`` points here).

``pip install .`` (or ``pip install "mosaicml @ git+<this repo>"``) calls :func:`build_wheel`, which takes the pinned
upstream ``mosaicml`` wheel (downloaded through pip and sha256-checked, or from ``COMPOSER_UPSTREAM_DIST``), applies
``patches/`` with ``git apply``, adds the overlay in ``composer/`` and writes a ``mosaicml`` wheel whose metadata is
upstream's except the version (``<upstream version>+<label>``, both from ``upstream.cfg``). The work is done by
:mod:`forktool.build`. Running ``python setup.py`` directly builds the wheel into ``dist/``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forktool import ForkError  # noqa: E402
from forktool import build as _build  # noqa: E402


def _run(func, *args):
    try:
        return func(*args)
    except ForkError as e:
        # pip shows the backend's output; a traceback would bury the message.
        print(f'\nerror: {e}\n', file=sys.stderr)
        raise SystemExit(1) from None


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _run(_build.build_wheel, Path(wheel_directory)).name


def build_sdist(sdist_directory, config_settings=None):
    return _run(_build.build_sdist, Path(sdist_directory)).name


if __name__ == '__main__':
    print(_run(_build.build_wheel, Path(__file__).resolve().parent / 'dist'))
