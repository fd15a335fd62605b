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
* Preemption (``Trainer(save_on_preemption=True)``): while such a trainer fits, a ``SIGTERM`` that Composer would have
  turned into ``SystemExit`` requests a :class:`StopRequest` instead. The trainer stops every rank after the batch in
  flight, checkpoints it and then exits with ``SystemExit(143)``. :meth:`.Trainer.request_stop` is the same stop
  without a signal, from any thread.
  ``COMPOSER_SAVE_ON_PREEMPTION`` turns it on for every Trainer whose argument is left at ``None``
  (:func:`resolve_save_on_preemption`), for frameworks that build the Trainer themselves.
* Force quit: a second ``SIGTERM`` or ``SIGINT`` while Composer is stopping (a stop requested by a signal, or the
  ``SystemExit`` that Composer raised), or while an engine closes after a first signal, ends the process at once with
  exit code ``128 + signum`` ("press Ctrl-C twice"), even when the main thread waits in a slow ``close()``. A repeat
  of the first signal within :data:`DUPLICATE_SIGNAL_WINDOW` seconds is the same signal delivered twice.
* Bounded close: a first signal that arrives while the main thread closes an engine lets the close finish, for at most
  ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` seconds (default :data:`DEFAULT_CLOSE_TIMEOUT`); then the process exits with
  ``128 + signum`` and one line on stderr names what was still closing. A watchdog thread woken through
  :func:`signal.set_wakeup_fd` (chained to any wakeup fd set before, e.g. asyncio's) enforces the bound and the force
  quit even while the main thread is blocked in C code, where Python signal handlers cannot run.
* Forked children (``os.fork``, multiprocessing's ``fork`` start method) that only inherited the handlers never run
  the parent's shutdown or preemption path: there a signal has the effect it would have without Composer. A child that
  creates its own Trainer owns the handlers from then on and gets the full behaviour. DataLoader workers of a trainer
  fitting with ``save_on_preemption`` block ``SIGTERM`` (:func:`shield_dataloader_workers`): their parent stops them
  after saving.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import select
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

log = logging.getLogger(__name__)

__all__ = [
    'CLOSE_TIMEOUT_ENV_VAR',
    'SAVE_ON_PREEMPTION_ENV_VAR',
    'SIGNAL_HANDLING_ENV_VAR',
    'SignalHandlerLease',
    'StopRequest',
    'acquire_signal_handlers',
    'engine_closing',
    'exit_after_preemption',
    'handle_preemption',
    'resolve_close_timeout',
    'resolve_save_on_preemption',
    'resolve_signal_handling',
    'shield_dataloader_workers',
    'warn_preemption_unavailable',
]

#: Environment variable read when ``enable_signal_handling`` is ``None``.
SIGNAL_HANDLING_ENV_VAR = 'COMPOSER_SIGNAL_HANDLING'

#: Environment variable read when ``Trainer(save_on_preemption=None)`` (the default).
SAVE_ON_PREEMPTION_ENV_VAR = 'COMPOSER_SAVE_ON_PREEMPTION'

#: Environment variable: how many seconds a first signal that arrives while an engine closes waits for the close.
CLOSE_TIMEOUT_ENV_VAR = 'COMPOSER_SIGNAL_CLOSE_TIMEOUT'

#: The default of ``COMPOSER_SIGNAL_CLOSE_TIMEOUT``: the ``composer`` launcher's clean-up timeout, and Kubernetes'
#: default grace period.
DEFAULT_CLOSE_TIMEOUT = 30.0

_TRUE_VALUES = ('1', 'true', 'yes', 'on')
_FALSE_VALUES = ('0', 'false', 'no', 'off')

#: :attr:`SignalHandlerLease.reason` when ``enable_signal_handling=False`` or ``COMPOSER_SIGNAL_HANDLING=0``.
DISABLED_REASON = 'signal handling is disabled (enable_signal_handling=False or COMPOSER_SIGNAL_HANDLING=0)'

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
# The stop requests of the trainers that fit with ``save_on_preemption=True`` right now. A tuple, replaced (never
# mutated) under ``_lock``, so that the handler iterates over a consistent snapshot without taking the lock.
_preemption_targets: tuple[StopRequest, ...] = ()
# Set by Composer's handler when it decided that the process ends: it raised SystemExit or requested a preemption stop.
_exit_pending = False
# The number of Engine.close() and Engine._close() calls in progress (a close() counts twice), and those on the main
# thread, where signal handlers run.
_closing_engines = 0
_main_thread_closing = 0
# A first SIGTERM/SIGINT that arrived while the main thread closed an engine: (signum, previous disposition). Its
# effect is raised when the outermost close returns.
_deferred_signal: Optional[tuple[int, _Handler]] = None
# When (time.monotonic()) and which SIGTERM/SIGINT with a standard effect (exit or KeyboardInterrupt) Composer's
# handler received first: it arms the force quit, and tells a duplicate delivery from a second signal. Signal 0: none.
_first_signal: tuple[float, int] = (0.0, 0)

#: A repeat of the first signal within this many seconds is the same signal delivered twice, not a second one: a job
#: scheduler (SLURM signals every process of a job step) and a launcher that forwards the signal (the ``composer``
#: launcher, ``torchrun``) reach a training process at nearly the same time.
DUPLICATE_SIGNAL_WINDOW = 0.25

# The process that owns Composer's handlers: the one that installed them, or a forked child that created an engine of
# its own since. A forked child that only inherited them (os.getpid() differs) never runs the parent's shutdown path.
_owner_pid = os.getpid()
# The seconds a first signal during an engine's close waits for it (COMPOSER_SIGNAL_CLOSE_TIMEOUT), read on acquire.
_close_timeout = DEFAULT_CLOSE_TIMEOUT
# The watchdog thread of the owner process, started with the first installation (see _SignalWatchdog).
_watchdog: Optional[_SignalWatchdog] = None

_F = TypeVar('_F', bound=Callable[..., Any])


class _ComposerSignalHandler:
    """The handler Composer installs for one signal. It remembers the disposition it replaced, and what that meant.

    Args:
        previous: What :func:`signal.getsignal` returned before Composer installed this handler.
    """

    #: The kinds of disposition Composer replaces: what the signal did before Composer's handler.
    IGNORED = 'ignored'  # SIG_IGN: keeps being ignored
    CALLABLE = 'callable'  # a handler of the user's or a framework's: it keeps being called
    KEYBOARD_INTERRUPT = 'KeyboardInterrupt'  # Python's default SIGINT handler
    EXIT = 'exit'  # the OS default (SIG_DFL): Composer exits through Python with 128 + signum

    def __init__(self, previous: _Handler):
        self.previous = previous
        if previous == signal.SIG_IGN:
            self.kind = self.IGNORED
        elif previous is signal.default_int_handler:
            self.kind = self.KEYBOARD_INTERRUPT
        elif callable(previous):
            self.kind = self.CALLABLE
        else:
            self.kind = self.EXIT

    @property
    def stops_the_process(self) -> bool:
        """Whether this signal, as handled by Composer, stops the process (an exit or ``KeyboardInterrupt``)."""
        return self.kind in (self.KEYBOARD_INTERRUPT, self.EXIT)

    def __call__(self, signum: int, frame: Optional[FrameType]) -> Any:
        # Runs on the main thread between two bytecodes, possibly while that thread holds a lock: it reads and writes
        # module state without taking ``_lock`` (assignments are atomic) and logs nothing.
        global _exit_pending, _first_signal
        previous = self.previous
        if self.kind == self.IGNORED:
            return None
        if os.getpid() != _owner_pid:
            return _handle_in_forked_child(previous, signum, frame)
        first_time, first_signum = _first_signal
        if _exit_pending or (_closing_engines > 0 and first_signum != 0):
            if signum == first_signum and time.monotonic() - first_time < DUPLICATE_SIGNAL_WINDOW:
                return None  # the first signal, delivered twice
            _force_quit(signum)
        if self.kind == self.CALLABLE:
            return self._call_previous(signum, frame)  # a user's handler or a framework's handler: it keeps working
        _first_signal = (time.monotonic(), signum)
        if self.kind == self.EXIT:
            _exit_pending = True
            if signum == signal.SIGTERM and _preemption_targets:
                # Preemption: the trainers stop after the batch in flight, checkpoint it and raise SystemExit.
                for stop_request in _preemption_targets:
                    stop_request.request(signum=signum)
                return None
        if _main_thread_closing > 0:
            # Raising here would interrupt a callback's close() (an upload, a flush) and leave it half done.
            _defer_until_closed(signum, previous)
            return None
        if self.kind == self.KEYBOARD_INTERRUPT:
            return self._call_previous(signum, frame)  # Python's default_int_handler: KeyboardInterrupt
        # The OS default would end the process without running ``finally`` blocks or ``atexit`` hooks. Exit through
        # Python instead, with the exit code a shell reports for death by this signal (143 for SIGTERM).
        raise SystemExit(128 + signum)

    def _call_previous(self, signum: int, frame: Optional[FrameType]) -> Any:
        previous = self.previous
        assert callable(previous), previous  # kind is CALLABLE or KEYBOARD_INTERRUPT
        return previous(signum, frame)

    def __repr__(self) -> str:
        return f'<composer signal handler, previous={self.previous!r}>'


class SignalHandlerLease:
    """A hold on Composer's signal handlers, returned by :func:`acquire_signal_handlers`.

    The handlers are restored when the last lease is released. :meth:`release` is idempotent and thread-safe.
    """

    def __init__(self, holds_handlers: bool, reason: Optional[str] = None, warned: bool = False):
        self._holds_handlers = holds_handlers
        self._reason = reason
        # Whether Composer's once-per-process warning (which names the cause and trainer.request_stop()) covers why
        # this lease holds nothing: then no second warning about the same situation is logged for it.
        self._warned = warned
        self._pid = os.getpid()  # a lease inherited by a forked child is not the child's to release

    @property
    def holds_handlers(self) -> bool:
        """Whether this lease holds (and has not yet released) Composer's installed handlers."""
        return self._holds_handlers

    @property
    def reason(self) -> Optional[str]:
        """Why this lease holds no handlers (``None`` if it holds them or was released)."""
        return self._reason

    def release(self) -> None:
        """Release this lease. When it is the last one, restore the handlers Composer replaced.

        Unless Composer's handler has decided that the process exits (it raised or deferred ``SystemExit``): then
        the handlers stay until the interpreter exits, so that a repeat of the signal (a launcher's clean-up
        ``SIGTERM`` to a rank that is already exiting) gives the same exit code instead of the OS default.
        """
        global _holders
        with _lock:
            if not self._holds_handlers:
                return
            self._holds_handlers = False
            if self._pid != os.getpid():
                return  # the parent's lease, released in a forked child (an inherited engine closes there)
            _holders -= 1
            if _holders == 0 and not _exit_pending:
                _restore_locked()
                _forget_signals()

    def __repr__(self) -> str:
        return f'SignalHandlerLease(holds_handlers={self._holds_handlers})'


def _read_bool_env(name: str, true_effect: str, false_effect: str) -> Optional[bool]:
    """Read a yes/no environment variable: ``None`` when unset, otherwise its value as a bool.

    Raises:
        ValueError: If the variable is set to anything but ``1``/``true``/``yes``/``on`` or
            ``0``/``false``/``no``/``off`` (any case, surrounding spaces ignored). The message names the variable, the
            accepted values and their effects.
    """
    raw_value = os.environ.get(name)
    if raw_value is None:
        return None
    value = raw_value.strip().lower()
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    raise ValueError(
        f'The environment variable {name}={raw_value!r} is not valid. Accepted values (any case): '
        f'{", ".join(_TRUE_VALUES)} to {true_effect}, or {", ".join(_FALSE_VALUES)} to {false_effect}. Unset it to '
        'use the default.',
    )


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
    return _read_bool_env(
        SIGNAL_HANDLING_ENV_VAR,
        true_effect="install Composer's SIGTERM/SIGINT handlers",
        false_effect='leave signals alone (the default is to install them)',
    )


def resolve_save_on_preemption(save_on_preemption: Optional[bool], can_save: bool) -> bool:
    """Resolve ``Trainer(save_on_preemption=...)`` against the ``COMPOSER_SAVE_ON_PREEMPTION`` environment variable.

    The variable lets frameworks that build the :class:`.Trainer` themselves (LLM Foundry, for one) turn preemption
    saving on without code: set it job-wide. A Trainer that has nowhere to save (no ``save_folder`` and no
    :class:`.CheckpointSaver` callback, e.g. an evaluation-only Trainer in the same job) then logs one warning and runs
    without preemption saving.

    Args:
        save_on_preemption (bool, optional): ``True`` or ``False`` always wins. ``None`` reads
            ``COMPOSER_SAVE_ON_PREEMPTION`` (the same values as ``COMPOSER_SIGNAL_HANDLING``); unset means ``False``.
        can_save (bool): Whether the Trainer has somewhere to write the checkpoint.

    Returns:
        bool: Whether ``SIGTERM`` during ``fit()`` checkpoints the batch in flight.

    Raises:
        TypeError: If ``save_on_preemption`` is not a bool or ``None``.
        ValueError: If ``save_on_preemption=True`` and ``can_save`` is false, or if ``COMPOSER_SAVE_ON_PREEMPTION`` has
            an invalid value.
    """
    if save_on_preemption is not None and not isinstance(save_on_preemption, bool):
        raise TypeError(
            f'save_on_preemption must be True, False or None, but got {save_on_preemption!r} of type '
            f'{type(save_on_preemption).__name__}.',
        )
    if save_on_preemption is True and not can_save:
        raise ValueError(
            'save_on_preemption=True needs somewhere to write the checkpoint: pass save_folder to the Trainer '
            '(or a CheckpointSaver callback).',
        )
    if save_on_preemption is not None:
        return save_on_preemption
    from_env = _read_bool_env(
        SAVE_ON_PREEMPTION_ENV_VAR,
        true_effect='checkpoint the batch in flight when SIGTERM arrives during fit() (save_on_preemption=True)',
        false_effect='exit on SIGTERM without saving (save_on_preemption=False, the default)',
    )
    if from_env and not can_save:
        log.warning(
            '%s is set, but this Trainer has no save_folder (nor a CheckpointSaver callback), so it runs without '
            'preemption saving: SIGTERM ends it without a checkpoint. Pass save_folder to save one, or '
            'save_on_preemption=False to silence this warning.',
            SAVE_ON_PREEMPTION_ENV_VAR,
        )
        return False
    return bool(from_env)


def resolve_close_timeout() -> float:
    """How long a first ``SIGTERM``/``SIGINT`` that arrives while an engine closes lets the close go on, in seconds.

    Reads ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` (a number of seconds, ``0`` or more; ``inf`` waits for as long as the close
    takes); :data:`DEFAULT_CLOSE_TIMEOUT` when it is unset.

    Raises:
        ValueError: If ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` is not such a number.
    """
    raw_value = os.environ.get(CLOSE_TIMEOUT_ENV_VAR)
    if raw_value is None or not raw_value.strip():
        return DEFAULT_CLOSE_TIMEOUT
    try:
        value = float(raw_value)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also rejects nan
        raise ValueError(
            f'The environment variable {CLOSE_TIMEOUT_ENV_VAR}={raw_value!r} is not valid. Set it to the number of '
            'seconds (0 or more, e.g. 30 or 120.5; inf to wait as long as it takes) that a first SIGTERM or SIGINT '
            'arriving while an engine closes lets the close go on before the process exits, or unset it for the '
            f'default ({DEFAULT_CLOSE_TIMEOUT:g} s).',
        )
    return value


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
    global _holders, _close_timeout
    enabled = resolve_signal_handling(enable_signal_handling)
    if enabled is False:
        return SignalHandlerLease(holds_handlers=False, reason=DISABLED_REASON)
    if enabled is None:
        owner = _framework_owning_signals()
        if owner is not None:
            _inform_once(owner)
            return SignalHandlerLease(holds_handlers=False, reason=owner)
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        # Python only lets the main thread change signal handlers, so only engines created there hold them: their
        # release can restore the handlers, whatever other threads do meanwhile.
        reason = (
            f'signal handlers can only be installed from the main thread, and this Trainer/Engine was created '
            f'on thread {thread.name!r}'
        )
        _warn_once(reason)
        return SignalHandlerLease(holds_handlers=False, reason=reason, warned=True)
    close_timeout = resolve_close_timeout()
    with _lock:
        _take_ownership_locked()
        if not _installed:
            error = _install_locked()
            if error is not None:
                _warn_once(error)
                return SignalHandlerLease(holds_handlers=False, reason=error, warned=True)
        if _holders == 0:  # the first holder, also a forked child that takes over
            _forget_signals()  # a new engine: the process went on after any stop (a caught SystemExit)
            _attach_watchdog_locked()  # detached again when the handlers are restored
        _close_timeout = close_timeout
        _holders += 1
        return SignalHandlerLease(holds_handlers=True)


def _take_ownership_locked() -> None:
    """In a forked child that creates an engine, take over the handlers it inherited: from now on they are its own.

    The child's engine then gets the full behaviour (exit with ``128 + signum`` after a clean close, preemption, force
    quit), as in a process that was never forked. The handlers that the child inherited were installed over the same
    dispositions that the child inherited, so they restore correctly there too.
    """
    global _owner_pid, _holders
    if _owner_pid != os.getpid():
        _owner_pid = os.getpid()
        _holders = 0  # the parent's leases are not the child's


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
    if not _installed and _watchdog is not None:
        _watchdog.detach()


def _restore_at_exit() -> None:
    """Put back the original handlers at interpreter exit, unless Composer's handler is why the process exits.

    Then they stay through the rest of the shutdown: a repeat of the signal (a launcher's clean-up ``SIGTERM``)
    still gives ``128 + signum`` instead of the OS default's death by that signal.
    """
    global _holders
    with _lock:
        if _installed and not _exit_pending:
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
        'SIGTERM, the engine will not close cleanly: checkpoints and loggers may not be flushed, and '
        'save_on_preemption cannot react to it. To fix this, create the Trainer on the main thread; otherwise handle '
        'SIGTERM yourself: call trainer.request_stop() (from any thread, or from your own signal handler) to stop '
        'every rank after the current batch and save a checkpoint, and call trainer.close() in a `finally` block. '
        'To opt out and silence this warning, pass enable_signal_handling=False to the Trainer or set %s=0. This '
        'warning is logged once per process.',
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
        'Composer left SIGTERM/SIGINT handling alone because %s. Call trainer.request_stop() to stop training after '
        'the current batch (with a checkpoint), and trainer.close() in a `finally` block to flush checkpoints and '
        'loggers; pass enable_signal_handling=True or set %s=1 to install Composer\'s handlers anyway.',
        reason,
        SIGNAL_HANDLING_ENV_VAR,
    )


class StopRequest:
    """A request to stop training after the batch in flight, agreed by all ranks (see :meth:`.Trainer.request_stop`).

    :meth:`request` may be called from any thread and from a signal handler: it only assigns attributes, so it never
    waits for a lock that the interrupted thread could hold. The training loop adds this rank's :meth:`vote` to the
    samples and tokens that it already all-reduces after every batch (:meth:`pack`), and records the sum with
    :meth:`tally` (:meth:`unpack`), so every
    rank learns of a stop requested on any rank after the same batch, without an extra collective.
    """

    def __init__(self) -> None:
        self._requested = False
        self._signum: Optional[int] = None
        self._stop_agreed = False
        self._preemption_agreed = False

    def request(self, signum: Optional[int] = None) -> None:
        """Ask the training loop to stop after the batch in flight.

        Args:
            signum (int, optional): The signal that preempts this process, if any. The trainer then raises
                ``SystemExit(128 + signum)`` once the checkpoint is written. (default: ``None``)
        """
        if signum is not None:
            self._signum = signum
        self._requested = True

    def vote(self, world_size: int) -> int:
        """Return this rank's vote: 0 (go on), 1 (stop) or ``world_size + 1`` (stop: a signal preempted it).

        A sum of votes over all ranks is positive when any rank asks to stop, and above ``world_size`` when a signal
        preempted any rank.
        """
        if self._signum is not None:
            return world_size + 1
        return int(self._requested)

    @staticmethod
    def ballot_size(world_size: int) -> int:
        """One more than the largest possible sum of votes over ``world_size`` ranks."""
        return world_size * (world_size + 1) + 1

    def pack(self, count: int, world_size: int) -> int:
        """``count`` with this rank's vote in its low digits: summing packed values sums counts and votes apart.

        Gloo's all-reduce of a small tensor costs about as much per element as the rest of it, so the vote travels in
        the tokens count instead of in an element of its own: ``count * ballot_size + vote``. Use an ``int64`` tensor.
        """
        return count * self.ballot_size(world_size) + self.vote(world_size)

    def unpack(self, packed_sum: int, world_size: int) -> int:
        """Split an all-reduced sum of :meth:`pack` values: :meth:`tally` the votes and return the summed count."""
        count, votes = divmod(packed_sum, self.ballot_size(world_size))
        self.tally(votes, world_size)
        return count

    def tally(self, vote_sum: int, world_size: int) -> None:
        """Record the sum of :meth:`vote` over all ranks, as all-reduced after a training batch."""
        self._stop_agreed = vote_sum > 0
        self._preemption_agreed = vote_sum > world_size

    def should_stop(self, world_size: int) -> bool:
        """Whether training stops after the current batch.

        With several ranks, only the tally counts, so that all ranks decide alike. A single process also stops for a
        request made after the last tally (for example during the batch's evaluation).

        Args:
            world_size (int): The number of ranks.
        """
        return self._stop_agreed or (world_size == 1 and self._requested)

    @property
    def preempted(self) -> bool:
        """Whether a signal preempted this rank or, as tallied, any other rank."""
        return self._signum is not None or self._preemption_agreed

    @property
    def exit_code(self) -> int:
        """The exit code of a preempted rank: ``128 + signum`` (143 for ``SIGTERM``, also when another rank got it)."""
        return 128 + (self._signum if self._signum is not None else signal.SIGTERM)

    def reset(self) -> None:
        """Forget the request and the tally (at the end of ``fit()``)."""
        self._requested = False
        self._signum = None
        self._stop_agreed = False
        self._preemption_agreed = False

    def __repr__(self) -> str:
        return (
            f'StopRequest(requested={self._requested}, signum={self._signum}, '
            f'stop_agreed={self._stop_agreed}, preemption_agreed={self._preemption_agreed})'
        )


def handle_preemption(
    lease: Optional[SignalHandlerLease],
    stop_request: StopRequest,
    save_on_preemption: bool,
    dataloaders: Sequence[Any] = (),
) -> contextlib.AbstractContextManager:
    """A context for one ``fit()``: while it is active, ``SIGTERM`` requests ``stop_request`` instead of exiting.

    Only when ``save_on_preemption`` is set, ``lease`` holds Composer's handlers and ``SIGTERM``'s disposition before
    them was the OS default (a handler of the user's or a framework's is called as before; it can call
    :meth:`.Trainer.request_stop`). Entering the context also forgets an earlier signal that the process recovered
    from (a caught ``KeyboardInterrupt`` or ``SystemExit``), so that only a signal received from now on arms the force
    quit. When ``lease`` holds no handlers, only the DataLoader workers are shielded (for
    :meth:`.Trainer.request_stop`).

    Args:
        lease (SignalHandlerLease, optional): The engine's lease.
        stop_request (StopRequest): The trainer's stop request.
        save_on_preemption (bool): Whether ``SIGTERM`` requests a stop (``Trainer(save_on_preemption=...)``).
        dataloaders (Sequence): The dataloaders that this ``fit()`` may iterate: with ``save_on_preemption``, their
            workers are shielded from ``SIGTERM`` (see :func:`shield_dataloader_workers`).
    """
    if lease is None or not lease.holds_handlers:
        return shield_dataloader_workers(dataloaders if save_on_preemption else ())
    return _preemption_context(stop_request, save_on_preemption, dataloaders)


@contextlib.contextmanager
def _preemption_context(stop_request: StopRequest, save_on_preemption: bool, dataloaders: Sequence[Any]):
    global _preemption_targets
    with _lock:
        _forget_signals()
        if save_on_preemption:
            _preemption_targets = (*_preemption_targets, stop_request)
    try:
        with shield_dataloader_workers(dataloaders if save_on_preemption else ()):
            yield
    finally:
        with _lock:
            if save_on_preemption:
                _preemption_targets = tuple(target for target in _preemption_targets if target is not stop_request)


def _forget_signals() -> None:
    """Disarm the force quit: the process goes on (a new ``fit()`` starts, or the handlers were restored)."""
    global _exit_pending, _first_signal
    _exit_pending = False
    _first_signal = (0.0, 0)


def exit_after_preemption() -> None:
    """Prepare this process to exit after a preemption stop: the trainer closes and raises ``SystemExit`` next.

    Composer's handlers stay installed until the interpreter exits (on the main thread, where they are installed),
    and any ``SIGTERM`` or ``SIGINT`` from now on ends the process at once with ``128 + signum``: for example the
    ``SIGTERM`` that the ``composer`` launcher sends to the ranks still running when the first rank exits. Without
    this, the engine's close would restore the OS default, and such a signal would kill the rank instead of letting
    it report 143.
    """
    global _exit_pending, _holders
    with _lock:
        _exit_pending = True
        if _installed and threading.current_thread() is threading.main_thread():
            _holders += 1  # never released: restored at interpreter exit


def _force_quit(signum: int) -> None:
    """End the process now, with the exit code of a death by ``signum``: the second signal while stopping."""
    code = 128 + signum
    message = (
        f'Composer: received {signal.Signals(signum).name} again while stopping; exiting at once with code {code}, '
        'without waiting for the engine to close.\n'
    )
    try:
        os.write(2, message.encode())
    except OSError:
        pass
    os._exit(code)


class _SignalWatchdog:
    """A daemon thread that learns of every signal at once, through :func:`signal.set_wakeup_fd`.

    Python runs signal handlers on the main thread between two bytecodes, so a main thread blocked in C code (a hung
    collective, a driver call, a wait that does not return on signals) runs none. The C-level handler still writes the
    signal's number to the wakeup fd, and this thread reads it. While the main thread closes an engine, it starts the
    close timeout at the first ``SIGTERM``/``SIGINT`` that Composer handles (Composer's handler starts it too, through
    :meth:`arm`, when it runs first), ends the process with ``128 + signum`` when the timeout runs out with the close
    still going on, and force-quits on a second signal. Every signal number it reads is passed on to the wakeup fd
    that was set before (asyncio's event loop, another library), which keeps working.

    ``_chained`` and ``_attached`` are written under ``_lock`` on the main thread. ``_deadline`` and
    ``_first_delivery`` are single assignments: by this thread, by the handler through :meth:`arm` (without the lock:
    it runs between two bytecodes of the main thread) and by :meth:`closed` (under ``_lock``), which clears them when
    the outermost close of the main thread returns.
    """

    #: Written by :meth:`arm` to wake the thread; not a signal number.
    _WAKE = 0

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C-level signal handler must never block on it
        self._chained = -1  # the wakeup fd that attach() replaced
        self._attached = False
        # The close timeout: (signum, time.monotonic() deadline) of the first signal during the current close.
        self._deadline: Optional[tuple[int, float]] = None
        # The first signal this thread read during the current close: (signum, time.monotonic()).
        self._first_delivery: Optional[tuple[int, float]] = None
        self._thread = threading.Thread(target=self._run, name='composer-signal-watchdog', daemon=True)
        self._thread.start()

    def attach(self) -> None:
        """Make this thread's pipe the wakeup fd (main thread), chaining the one that was set before."""
        try:
            previous = signal.set_wakeup_fd(self._write_fd)
        except (ValueError, OSError):
            log.debug('Could not set the signal wakeup fd.', exc_info=True)
            return
        if previous != self._write_fd:
            self._chained = previous
        self._attached = True

    def detach(self) -> bool:
        """Put back the wakeup fd that was set before, unless someone set another one since (main thread).

        Returns:
            bool: Whether this pipe is no longer the wakeup fd (``False`` off the main thread: the next restore on the
            main thread detaches it).
        """
        if not self._attached:
            return True
        try:
            current = signal.set_wakeup_fd(self._chained)
            if current != self._write_fd:
                signal.set_wakeup_fd(current)  # not ours any more: leave the newer one in place
        except (ValueError, OSError):
            log.debug('Could not restore the signal wakeup fd yet.', exc_info=True)
            return False
        self._attached = False
        self._chained = -1
        return True

    def arm(self, signum: int) -> None:
        """Start the close timeout for ``signum``, unless it runs already (called by Composer's handler)."""
        if self._deadline is None:
            self._deadline = (signum, time.monotonic() + _close_timeout)
        try:
            os.write(self._write_fd, bytes([self._WAKE]))
        except OSError:
            pass

    def closed(self) -> None:
        """The outermost close of the main thread returned: the timeout and the first signal no longer apply."""
        self._deadline = None
        self._first_delivery = None

    def forget_in_child(self) -> None:
        """In a forked child, where this thread does not run: the child's signals must not wake the parent's."""
        if self.detach():  # otherwise keep the fds open: the C-level handler still writes to them
            os.close(self._read_fd)
            os.close(self._write_fd)

    def _run(self) -> None:
        while True:
            deadline = self._deadline
            timeout = None if deadline is None else max(0.0, deadline[1] - time.monotonic())
            try:
                ready, _, _ = select.select([self._read_fd], [], [], timeout)
                data = os.read(self._read_fd, 512) if ready else b''
            except (OSError, ValueError):
                return  # the fds were closed
            if ready and not data:
                return
            chained = self._chained
            signums = bytes(b for b in data if b != self._WAKE)
            if signums and chained >= 0:
                try:
                    os.write(chained, signums)
                except OSError:
                    pass
            now = time.monotonic()
            for signum in signums:
                self._delivered(signum, now)
            self._check_deadline(now)

    def _delivered(self, signum: int, now: float) -> None:
        handler = _installed.get(signum)
        if handler is None or not handler.stops_the_process or _main_thread_closing == 0 or os.getpid() != _owner_pid:
            return
        first = self._first_delivery
        if first is None:
            self._first_delivery = (signum, now)
            if self._deadline is None:
                self._deadline = (signum, now + _close_timeout)
        elif signum != first[0] or now - first[1] >= DUPLICATE_SIGNAL_WINDOW:
            _force_quit(signum)  # a second signal while the main thread closes, maybe blocked where no handler runs

    def _check_deadline(self, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline[1]:
            return
        if _main_thread_closing == 0:
            self._deadline = None
            return
        signum, _ = deadline
        code = 128 + signum
        message = (
            f'Composer: {signal.Signals(signum).name} arrived while the engine was closing, and the close has not '
            f'finished after {_close_timeout:g} s ({_what_is_closing()}); exiting with code {code}. To let it take '
            f'longer, set {CLOSE_TIMEOUT_ENV_VAR} (seconds).\n'
        )
        try:
            os.write(2, message.encode())
        except OSError:
            pass
        os._exit(code)


def _what_is_closing() -> str:
    """Name what the main thread's engine close is doing: the callback method it is in, and the innermost frame."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    stack = []  # innermost first
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    if not stack:
        return 'the main thread has no Python frame'

    def where(frame: FrameType) -> str:
        code = frame.f_code
        return f'{getattr(code, "co_qualname", code.co_name)} at {code.co_filename}:{frame.f_lineno}'

    engine_file = os.path.join('composer', 'core', 'engine.py')
    closes = [
        i for i, f in enumerate(stack) if f.f_code.co_name == '_close' and f.f_code.co_filename.endswith(engine_file)
    ]
    if closes and closes[-1] > 0:
        inside = stack[closes[-1] - 1]  # what the outermost Engine._close called: a callback's close() or post_close()
        description = f'still in {where(inside)}'
        if inside is not stack[0]:
            description += f', waiting in {where(stack[0])}'
        return description
    return f'the main thread is in {where(stack[0])}'


def _attach_watchdog_locked() -> None:
    """Start the watchdog thread (once per owner process) and make its pipe the wakeup fd (main thread)."""
    global _watchdog
    if _watchdog is None:
        try:
            _watchdog = _SignalWatchdog()
        except (OSError, RuntimeError):  # out of fds, or at interpreter shutdown where no thread can start
            log.debug('Could not start the signal watchdog thread.', exc_info=True)
            return
    _watchdog.attach()


def engine_closing(close: _F) -> _F:
    """Mark the time spent in ``close`` (the :class:`.Engine`'s shutdown) as closing.

    A first ``SIGTERM`` or ``SIGINT`` that arrives while the main thread closes an engine does not interrupt the
    callbacks' ``close()`` (their uploads and flushes): the engine finishes closing, then the signal takes effect
    (``SystemExit(128 + signum)``, or ``KeyboardInterrupt``) when the outermost close returns. The close gets at most
    ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` seconds for that (:func:`resolve_close_timeout`); then the process exits with
    ``128 + signum``, and one line on stderr names what was still closing. A second one, or one while an engine closes
    after a first signal, ends the process at once with exit code ``128 + signum`` instead of waiting for slow
    callbacks or uploads.
    """

    @functools.wraps(close)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _closing_engines, _main_thread_closing
        on_main_thread = threading.current_thread() is threading.main_thread()
        with _lock:
            _closing_engines += 1
            _main_thread_closing += on_main_thread
        try:
            return close(*args, **kwargs)
        finally:
            with _lock:
                _closing_engines -= 1
                _main_thread_closing -= on_main_thread
                if on_main_thread and _main_thread_closing == 0 and _watchdog is not None:
                    _watchdog.closed()
            if on_main_thread and _main_thread_closing == 0:
                _raise_deferred_signal()

    return wrapper  # type: ignore[return-value]


def _defer_until_closed(signum: int, previous: _Handler) -> None:
    """Keep the effect of a signal that arrived while the main thread closes an engine until the close returns.

    At interpreter exit (the engines' exit hooks) the process is already ending: the close finishes and the exit
    goes on with its own status (an exception raised in an exit hook would only be printed).
    """
    global _deferred_signal
    effect = 'KeyboardInterrupt' if callable(previous) else f'exit code {128 + signum}'
    if threading.main_thread().is_alive():
        _deferred_signal = (signum, previous)
    else:  # Python marks the main thread stopped before it runs the exit hooks
        effect = 'the interpreter exits'
    if _watchdog is not None:
        _watchdog.arm(signum)  # the close may hang: it gets at most _close_timeout seconds
    message = (
        f'Composer: received {signal.Signals(signum).name} while the engine closes; {effect} once it has closed '
        f'(waiting at most {_close_timeout:g} s, {CLOSE_TIMEOUT_ENV_VAR}). Send SIGTERM or SIGINT again to exit at '
        'once.\n'
    )
    try:
        os.write(2, message.encode())
    except OSError:
        pass


def _raise_deferred_signal() -> None:
    """Raise the effect of a signal deferred by :func:`_defer_until_closed`, if any."""
    global _deferred_signal
    deferred, _deferred_signal = _deferred_signal, None
    if deferred is None:
        return
    signum, previous = deferred
    if callable(previous):
        previous(signum, None)  # Python's default_int_handler raises KeyboardInterrupt
    raise SystemExit(128 + signum)


def warn_preemption_unavailable(lease: Optional[SignalHandlerLease]) -> None:
    """Say that ``save_on_preemption`` will not react to ``SIGTERM`` in this process, and what will.

    For a trainer with ``save_on_preemption=True`` whose engine holds no signal handlers: at INFO when the user
    disabled signal handling, as a warning otherwise. Nothing is logged when the lease's own warning (Composer could not
    install its handlers, logged once per process) already said so: one situation, one warning.
    """
    if lease is not None and lease._warned:
        return
    reason = (lease.reason if lease is not None else None) or 'Composer does not hold the signal handlers'
    level = logging.INFO if reason == DISABLED_REASON else logging.WARNING
    log.log(
        level,
        'save_on_preemption=True, but SIGTERM will not trigger it in this process: %s. Call trainer.request_stop() '
        'instead (from any thread, or from the signal handler of the framework or code that owns SIGTERM here): '
        'every rank stops after the batch in flight and saves a checkpoint of it.',
        reason,
    )


def _after_fork_in_child() -> None:
    """Forget the parent's trainers and state in a forked child: it owns no engine, no stop and no lock holder.

    The child does not own the handlers it inherited (``_owner_pid`` is the parent's) until it creates an engine of its
    own (:func:`_take_ownership_locked`). The parent's watchdog thread does not exist in the child, and the wakeup fd
    that the child inherited leads to the parent's watchdog: the child's signals must not wake it.
    """
    global _lock, _preemption_targets, _closing_engines, _main_thread_closing, _deferred_signal, _watchdog
    _lock = threading.RLock()  # another thread of the parent may have held it at the time of the fork
    _preemption_targets = ()
    _closing_engines = _main_thread_closing = 0
    _deferred_signal = None
    _forget_signals()
    if _watchdog is not None:
        _watchdog.forget_in_child()
        _watchdog = None


def _handle_in_forked_child(previous: _Handler, signum: int, frame: Optional[FrameType]) -> Any:
    """What Composer's inherited handler does in a forked child: never the parent's shutdown or preemption path.

    A forked child did not create the parent's trainers: exiting through Python there would run the inherited exit
    hooks (the parent's engines would close, callbacks would flush and upload, from the child). Instead, a handler
    that was installed before Composer's (the user's, Python's ``KeyboardInterrupt``) is called, and otherwise the
    signal has its OS default effect: the child terminates at once, as it would without Composer. (DataLoader workers
    never get here: PyTorch installs its own ``SIGTERM`` handler in them; see :func:`shield_dataloader_workers`.)
    """
    if callable(previous):
        return previous(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return None


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _SigtermShieldedWorkerInit:
    """A DataLoader ``worker_init_fn`` that blocks ``SIGTERM`` in the worker, then calls the original one.

    A module-level class, so that it pickles for the ``spawn`` and ``forkserver`` start methods.
    """

    def __init__(self, worker_init_fn: Optional[Callable[[int], None]]):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


@contextlib.contextmanager
def shield_dataloader_workers(dataloaders: Sequence[Any]):
    """While active, the workers that these dataloaders start block ``SIGTERM``.

    Schedulers such as SLURM signal every process of a job step, DataLoader workers included. PyTorch's workers die on
    a ``SIGTERM`` that does not come from their parent, and the parent's DataLoader then raises (``DataLoader worker
    ... is killed by signal``) in the middle of the batch that a preemption stop is about to save. With ``SIGTERM``
    blocked, the workers keep serving; they exit as usual when the DataLoader shuts them down (at the latest when the
    engine closes) or, as PyTorch's workers do, when their parent dies. Only ``torch.utils.data.DataLoader`` objects
    with ``num_workers > 0`` are changed, through their public ``worker_init_fn``, which is restored on exit; workers
    that are already running (``persistent_workers``) keep the mask they started with.

    Args:
        dataloaders (Sequence): Dataloaders, or anything else (ignored).
    """
    shielded = []
    if hasattr(signal, 'pthread_sigmask') and 'torch' in sys.modules:
        from torch.utils.data import DataLoader
        for dataloader in dataloaders:
            if isinstance(dataloader, DataLoader) and dataloader.num_workers > 0 and not isinstance(
                dataloader.worker_init_fn,
                _SigtermShieldedWorkerInit,
            ):
                original = dataloader.worker_init_fn
                dataloader.worker_init_fn = _SigtermShieldedWorkerInit(original)
                shielded.append((dataloader, original))
    try:
        yield
    finally:
        for dataloader, original in shielded:
            dataloader.worker_init_fn = original
