"""Tooling of the signal-handling fork of MosaicML Composer.

The repository holds a patch series against a pinned upstream release (``upstream.cfg``, ``patches/``), the fork's
new modules (``composer/``) and its tests (``tests/``). This package turns them into a drop-in ``mosaicml`` wheel
(:mod:`forktool.build`, used by ``setup.py``) and maintains the series (:mod:`forktool.series`: ``tree``, ``export``,
``check``, ``pr``). ``python -m forktool --help`` lists the commands; the Makefile calls them.

Only the standard library, ``git``, ``pip`` and ``wheel`` are used, so the build backend runs in pip's isolated
build environment.
"""


class ForkError(Exception):
    """An error with a message meant for the person running the build or the tooling."""
