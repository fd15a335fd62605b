# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Process signal handling for the training :class:`.Engine`.

Composer turns ``SIGTERM`` (and ``SIGINT``) into a regular Python exit while a training engine is alive, so that
``finally`` blocks and :mod:`atexit` hooks run, the engine closes, callbacks' ``close()`` / ``post_close()`` run and
pending checkpoint uploads are flushed. This module owns all of that logic:

* Importing Composer has no signal side effects. Handlers are installed by :func:`acquire_signal_handlers`, which the
  :class:`.Engine` calls when it starts, and the handlers that were there before are put back when the last holder
  releases its :class:`SignalHandlerLease` (:meth:`.Engine.close`, garbage collection or interpreter exit).
* Composer's handler never drops the disposition it replaced: a Python callable (the user's handler, Python's
  ``default_int_handler``, a framework's handler) is called, ``SIG_IGN`` keeps ignoring, and only the OS default
  (``SIG_DFL``) becomes ``SystemExit(128 + signum)`` in the main thread.
* When handlers cannot be installed (not the main thread, a sub-interpreter, a framework that refuses), Composer logs
  one warning per process and training continues.
* ``enable_signal_handling`` (a :class:`.Trainer` / :class:`.Engine` argument) or the ``COMPOSER_SIGNAL_HANDLING``
  environment variable opts out.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Optional, Union

log = logging.getLogger(__name__)

__all__ = [
    'SIGNAL_HANDLING_ENV_VAR',
    'SignalHandlerLease',
    'acquire_signal_handlers',
    'resolve_signal_handling',
]

#: Environment variable read when ``enable_signal_handling`` is ``None``.
SIGNAL_HANDLING_ENV_VAR = 'COMPOSER_SIGNAL_HANDLING'

_TRUE_VALUES = ('1', 'true', 'yes', 'on')
_FALSE_VALUES = ('0', 'false', 'no', 'off')

#: The signals Composer handles, in installation order.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# What signal.getsignal() returns: a Python callable, SIG_DFL/SIG_IGN, or None for a handler installed from C.
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

# All module state below is guarded by ``_lock``. It is re-entrant because a signal can arrive (and run Python code)
# on the main thread while that thread holds the lock.
_lock = threading.RLock()
_holders = 0
# signum -> the handler Composer installed for it. Empty when nothing is installed.
_installed: dict[int, _ComposerSignalHandler] = {}
_warned = False
_informed = False
_atexit_registered = False


class _ComposerSignalHandler:
    """The handler Composer installs for one signal. It remembers the disposition it replaced.

    Args:
        previous: What :func:`signal.getsignal` returned before Composer installed this handler.
    """

    def __init__(self, previous: _Handler):
        self.previous = previous

    def __call__(self, signum: int, frame: Optional[FrameType]) -> Any:
        previous = self.previous
        if previous == signal.SIG_IGN:
            return None
        if callable(previous):
            # A user's handler, Python's ``default_int_handler`` or a framework's handler: it keeps working.
            return previous(signum, frame)
        # The OS default would end the process without running ``finally`` blocks or ``atexit`` hooks. Exit through
        # Python instead, with the exit code a shell reports for death by this signal (143 for SIGTERM).
        raise SystemExit(128 + signum)

    def __repr__(self) -> str:
        return f'<composer signal handler, previous={self.previous!r}>'


class SignalHandlerLease:
    """A hold on Composer's signal handlers, returned by :func:`acquire_signal_handlers`.

    The handlers are restored when the last lease is released. :meth:`release` is idempotent and thread-safe.
    """

    def __init__(self, holds_handlers: bool):
        self._holds_handlers = holds_handlers

    @property
    def holds_handlers(self) -> bool:
        """Whether this lease holds (and has not yet released) Composer's installed handlers."""
        return self._holds_handlers

    def release(self) -> None:
        """Release this lease. When it is the last one, restore the handlers Composer replaced."""
        global _holders
        with _lock:
            if not self._holds_handlers:
                return
            self._holds_handlers = False
            _holders -= 1
            if _holders == 0:
                _restore_locked()

    def __repr__(self) -> str:
        return f'SignalHandlerLease(holds_handlers={self._holds_handlers})'


def resolve_signal_handling(enable_signal_handling: Optional[bool] = None) -> Optional[bool]:
    """Resolve the ``enable_signal_handling`` argument against the ``COMPOSER_SIGNAL_HANDLING`` environment variable.

    Args:
        enable_signal_handling (bool, optional): ``True`` or ``False`` always wins. ``None`` reads
            ``COMPOSER_SIGNAL_HANDLING`` (``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any case).

    Returns:
        Optional[bool]: ``True`` or ``False`` when the argument or the environment variable decided, ``None`` when
        neither did (the default: install the handlers, except where a framework such as Ray owns the signals).

    Raises:
        TypeError: If ``enable_signal_handling`` is not a bool or ``None``.
        ValueError: If ``COMPOSER_SIGNAL_HANDLING`` is set to any other value.
    """
    if enable_signal_handling is not None:
        if not isinstance(enable_signal_handling, bool):
            raise TypeError(
                'enable_signal_handling must be True, False or None, but got '
                f'{enable_signal_handling!r} of type {type(enable_signal_handling).__name__}.',
            )
        return enable_signal_handling
    raw_value = os.environ.get(SIGNAL_HANDLING_ENV_VAR)
    if raw_value is None:
        return None
    value = raw_value.strip().lower()
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    raise ValueError(
        f'The environment variable {SIGNAL_HANDLING_ENV_VAR}={raw_value!r} is not valid. Accepted values (any case): '
        f'{", ".join(_TRUE_VALUES)} to install Composer\'s SIGTERM/SIGINT handlers, or {", ".join(_FALSE_VALUES)} to '
        'leave signals alone. Unset it to use the default (install).',
    )


def acquire_signal_handlers(enable_signal_handling: Optional[bool] = None) -> SignalHandlerLease:
    """Install Composer's SIGTERM and SIGINT handlers, or share the installation that is already in place.

    Never raises because of the signal machinery: if the handlers cannot be installed, one warning per process says
    why and what to do, and the returned lease holds nothing.

    Args:
        enable_signal_handling (bool, optional): See :func:`resolve_signal_handling`. ``False`` means this function
            neither calls :func:`signal.signal` nor logs anything.

    Returns:
        SignalHandlerLease: Call :meth:`SignalHandlerLease.release` when the engine closes.
    """
    global _holders
    enabled = resolve_signal_handling(enable_signal_handling)
    if enabled is False:
        return SignalHandlerLease(holds_handlers=False)
    if enabled is None:
        owner = _framework_owning_signals()
        if owner is not None:
            _inform_once(owner)
            return SignalHandlerLease(holds_handlers=False)
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        # Python only lets the main thread change signal handlers, so only engines created there hold them: their
        # release can restore the handlers, whatever other threads do meanwhile.
        _warn_once(
            f'signal handlers can only be installed from the main thread, and this Trainer/Engine was created '
            f'on thread {thread.name!r}',
        )
        return SignalHandlerLease(holds_handlers=False)
    with _lock:
        if not _installed:
            error = _install_locked()
            if error is not None:
                _warn_once(error)
                return SignalHandlerLease(holds_handlers=False)
        _holders += 1
        return SignalHandlerLease(holds_handlers=True)


def _install_locked() -> Optional[str]:
    """Install a handler for every signal in :data:`HANDLED_SIGNALS`, all or nothing.

    Returns:
        Optional[str]: ``None`` on success, otherwise why the handlers could not be installed.
    """
    global _atexit_registered
    installed: dict[int, _ComposerSignalHandler] = {}
    try:
        for signum in HANDLED_SIGNALS:
            previous = signal.getsignal(signum)
            if previous is None:
                raise RuntimeError(
                    f'{signal.Signals(signum).name} has a handler that was not installed from Python, which '
                    'Composer can neither call nor restore',
                )
            handler = _ComposerSignalHandler(previous)
            signal.signal(signum, handler)
            installed[signum] = handler
    except (ValueError, OSError, RuntimeError) as e:
        # Roll back what was installed, in reverse order. The rollback runs in the thread where installing just
        # worked, so it cannot fail for the reasons installing did.
        for signum, handler in reversed(list(installed.items())):
            try:
                signal.signal(signum, handler.previous)
            except (ValueError, OSError, RuntimeError):
                log.debug('Could not roll back the handler for %s.', signal.Signals(signum).name, exc_info=True)
        return f'{type(e).__name__}: {e}'
    _installed.update(installed)
    if not _atexit_registered:
        # Registered once, before any engine registers its own exit hook: atexit runs hooks in LIFO order, so the
        # engines close (with the handlers still in place) before the original handlers are put back.
        atexit.register(_restore_at_exit)
        _atexit_registered = True
    return None


def _restore_locked() -> None:
    """Put back the handlers Composer replaced, leaving any handler that someone else installed since."""
    for signum, handler in list(_installed.items()):
        try:
            if signal.getsignal(signum) is handler:
                signal.signal(signum, handler.previous)
        except (ValueError, OSError, RuntimeError):
            # Typically: the last engine closed on a thread other than the main one. Composer's handler keeps
            # delegating to the one it replaced; it is restored by the next release on the main thread or at exit.
            log.debug('Could not restore the handler for %s yet.', signal.Signals(signum).name, exc_info=True)
            continue
        del _installed[signum]


def _restore_at_exit() -> None:
    global _holders
    with _lock:
        if _installed:
            _holders = 0
            _restore_locked()


def _framework_owning_signals() -> Optional[str]:
    """Say why a framework owns this process's signals right now, if one does.

    * :func:`signal.signal` itself is replaced: a framework intercepts handler changes, e.g. Ray's ``DeferSigint``
      (Ray 2.9 raises, later versions install the handler when the context exits, replacing Ray's own).
    * A Ray worker process uses SIGINT to cancel tasks (``ray.cancel``) and SIGTERM to shut down. Only checked when
      Ray is already imported; this never imports it.
    """
    if getattr(signal.signal, '__module__', 'signal') != 'signal':
        patch = signal.signal
        name = f'{getattr(patch, "__module__", "?")}.{getattr(patch, "__qualname__", type(patch).__name__)}'
        return f'signal.signal is replaced by {name} (as Ray\'s DeferSigint does), so a framework manages signals'
    if 'ray' not in sys.modules:
        return None
    try:
        from ray._private import worker as ray_worker  # type: ignore
        if ray_worker.global_worker.mode == ray_worker.WORKER_MODE:
            return 'this process is a Ray worker, and Ray handles SIGINT (ray.cancel) and SIGTERM in its workers'
    except Exception:  # Ray's private API moved: fall back to installing, which degrades gracefully.
        return None
    return None


def _warn_once(reason: str) -> None:
    global _warned
    with _lock:  # many threads may get here at once; exactly one of them logs
        if _warned:
            return
        _warned = True
    log.warning(
        'Composer could not install its SIGTERM/SIGINT handlers: %s. Training continues, but if this process receives '
        'SIGTERM, the engine will not close cleanly: checkpoints and loggers may not be flushed. To fix this, create '
        'the Trainer on the main thread; otherwise call trainer.close() in a `finally` block and handle SIGTERM '
        'yourself. To opt out and silence this warning, pass enable_signal_handling=False to the Trainer or set '
        '%s=0. This warning is logged once per process.',
        reason,
        SIGNAL_HANDLING_ENV_VAR,
    )


def _inform_once(reason: str) -> None:
    global _informed
    with _lock:
        if _informed:
            return
        _informed = True
    log.info(
        'Composer left SIGTERM/SIGINT handling alone because %s. Call trainer.close() in a `finally` block to '
        'flush checkpoints and loggers; pass enable_signal_handling=True or set %s=1 to install Composer\'s '
        'handlers anyway.',
        reason,
        SIGNAL_HANDLING_ENV_VAR,
    )
