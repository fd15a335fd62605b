# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Process signal handling for the training :class:`.Engine`.

Composer turns ``SIGTERM`` (and ``SIGINT``) into a regular Python exit while a training engine is alive, so that
``finally`` blocks and :mod:`atexit` hooks run, the engine closes, callbacks' ``close()`` / ``post_close()`` run and
pending checkpoint uploads are flushed:

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
* Bounded close: a first signal that arrives while the main thread closes an engine (:func:`engine_closing`) lets the
  close finish, for at most ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` seconds (default :data:`DEFAULT_CLOSE_TIMEOUT`); then
  the process exits with ``128 + signum`` and one line on stderr names what was still closing. A watchdog thread woken
  through :func:`signal.set_wakeup_fd` (chained to any wakeup fd set before, e.g. asyncio's) enforces the bound and the
  force quit even while the main thread is blocked in C code, where Python signal handlers cannot run.
* Force quit: a second ``SIGTERM`` or ``SIGINT`` while Composer is stopping the process (the ``SystemExit`` that
  Composer raised, or a stop requested through :func:`intercept_sigterm`), or while an engine closes after a first
  signal, ends the process at once with exit code ``128 + signum`` ("press Ctrl-C twice"). A repeat of the first
  signal within :data:`DUPLICATE_SIGNAL_WINDOW` seconds is the same signal delivered twice.
* Forked children (``os.fork``, multiprocessing's ``fork`` start method) that only inherited the handlers never run
  the parent's shutdown path: there a signal has the effect it would have without Composer. A child that creates its
  own engine owns the handlers from then on and gets the full behaviour.

All of this state lives on one :class:`_ProcessState` object. Other parts of Composer change what ``SIGTERM`` does
only through :func:`intercept_sigterm` and :func:`keep_handlers_until_exit` (for example, to save a checkpoint
before the process exits), and what the warnings advise through :func:`set_stop_advice`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
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
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

log = logging.getLogger(__name__)

__all__ = [
    'CLOSE_TIMEOUT_ENV_VAR',
    'SIGNAL_HANDLING_ENV_VAR',
    'SignalHandlerLease',
    'StopAdvice',
    'acquire_signal_handlers',
    'engine_closing',
    'intercept_sigterm',
    'keep_handlers_until_exit',
    'read_bool_env',
    'resolve_close_timeout',
    'resolve_signal_handling',
    'set_stop_advice',
]

#: Environment variable read when ``enable_signal_handling`` is ``None``.
SIGNAL_HANDLING_ENV_VAR = 'COMPOSER_SIGNAL_HANDLING'

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

#: A repeat of the first signal within this many seconds is the same signal delivered twice, not a second one: a job
#: scheduler (SLURM signals every process of a job step) and a launcher that forwards the signal (the ``composer``
#: launcher, ``torchrun``) reach a training process at nearly the same time.
DUPLICATE_SIGNAL_WINDOW = 0.25

# What signal.getsignal() returns: a Python callable, SIG_DFL/SIG_IGN, or None for a handler installed from C.
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

_F = TypeVar('_F', bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class StopAdvice:
    """What Composer's messages advise where its handlers are not installed (see :func:`set_stop_advice`).

    Attributes:
        lost (str): What else ``SIGTERM`` then misses, after "checkpoints and loggers may not be flushed".
        handle_sigterm (str): What to do when handling ``SIGTERM`` yourself (the warning).
        stop (str): How to stop training cleanly (the message where a framework owns the signals).
    """

    lost: str = ''
    handle_sigterm: str = 'call trainer.close() in a `finally` block'
    stop: str = 'Call trainer.close() in a `finally` block to flush checkpoints and loggers'


@dataclasses.dataclass(eq=False)
class _ProcessState:
    """Everything Composer's signal handling knows about this process. There is one instance, :data:`_state`.

    Fields in the first group are written under :attr:`lock` (re-entrant: a signal handler can run on the main thread
    while that thread holds it). Fields in the second group are written by Composer's handler, which runs between two
    bytecodes of the main thread, possibly while that thread holds the lock: it never takes the lock and only assigns
    (an assignment is atomic); the other writers hold the lock.
    """

    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    #: The process that owns the handlers: the one that installed them, or a forked child that created an engine of
    #: its own since. In a forked child that only inherited them, ``os.getpid()`` differs (:meth:`is_inherited`).
    owner_pid: int = dataclasses.field(default_factory=os.getpid)
    #: The number of unreleased :class:`SignalHandlerLease` objects that hold the handlers.
    holders: int = 0
    #: Set by :func:`keep_handlers_until_exit`: the handlers stay installed until the interpreter exits.
    kept_until_exit: bool = False
    #: signum -> the handler Composer installed for it. Empty when nothing is installed.
    installed: dict[int, _ComposerSignalHandler] = dataclasses.field(default_factory=dict)
    #: Whether the once-per-process warning (handlers could not be installed) or info (a framework owns the signals)
    #: was logged, and whether the exit hook that restores the handlers is registered.
    warned: bool = False
    informed: bool = False
    atexit_registered: bool = False
    #: What the warnings advise (:func:`set_stop_advice`).
    stop_advice: StopAdvice = dataclasses.field(default_factory=StopAdvice)
    #: ``COMPOSER_SIGNAL_CLOSE_TIMEOUT``, read by :func:`acquire_signal_handlers`.
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    #: The watchdog thread of the owner process, started with the first installation.
    watchdog: Optional[_SignalWatchdog] = None
    #: The callbacks of the active :func:`intercept_sigterm` contexts: a tuple, replaced (never mutated), so that the
    #: handler iterates over a consistent snapshot without taking the lock.
    sigterm_stops: tuple[Callable[[int], None], ...] = ()
    #: The depth of :func:`engine_closing` calls in progress (``Engine.close()`` calls the closing ``Engine._close()``,
    #: so one close is two levels), in all threads and on the main thread, where signal handlers run.
    close_depth: int = 0
    main_thread_close_depth: int = 0

    #: Composer's handler decided that the process ends: it raised ``SystemExit`` or passed ``SIGTERM`` to
    #: :func:`intercept_sigterm`'s callback. Also set by :func:`keep_handlers_until_exit`.
    exit_pending: bool = False
    #: When (``time.monotonic()``) and which signal with a standard effect (exit or ``KeyboardInterrupt``) Composer's
    #: handler received first: it arms the force quit, and tells a duplicate delivery from a second signal. Signal 0:
    #: none.
    first_signal: tuple[float, int] = (0.0, 0)
    #: A first signal that arrived while the main thread closed an engine, and the handler that received it: its effect
    #: is raised when the outermost close returns.
    deferred_signal: Optional[tuple[int, _ComposerSignalHandler]] = None

    def is_inherited(self) -> bool:
        """Whether this is a forked child that only inherited the handlers (it owns no engine of its own)."""
        return os.getpid() != self.owner_pid

    def is_held(self) -> bool:
        """Whether a lease, or :func:`keep_handlers_until_exit`, keeps the handlers installed."""
        return self.holders > 0 or self.kept_until_exit

    def is_stopping(self) -> bool:
        """Whether a second ``SIGTERM``/``SIGINT`` now force-quits: the process is stopping because of a signal."""
        return self.exit_pending or (self.close_depth > 0 and self.first_signal[1] != 0)

    def is_duplicate(self, signum: int) -> bool:
        """Whether ``signum`` is the first signal, delivered again within :data:`DUPLICATE_SIGNAL_WINDOW`."""
        first_time, first_signum = self.first_signal
        return signum == first_signum and time.monotonic() - first_time < DUPLICATE_SIGNAL_WINDOW

    def forget_signals(self) -> None:
        """Disarm the force quit: the process goes on (a new engine or ``fit()``, or the handlers were restored)."""
        self.exit_pending = False
        self.first_signal = (0.0, 0)

    def take_ownership(self) -> None:
        """In a forked child that creates an engine, take over the handlers it inherited (under :attr:`lock`).

        The child's engine then gets the full behaviour (exit with ``128 + signum`` after a clean close, force quit),
        as in a process that was never forked. The handlers that the child inherited were installed over the same
        dispositions that the child inherited, so they restore correctly there too.
        """
        if self.is_inherited():
            self.owner_pid = os.getpid()
            self.holders = 0  # the parent's leases are not the child's
            self.kept_until_exit = False

    def after_fork_in_child(self) -> None:
        """Forget the parent's engines, stops and lock holders in a forked child (``os.register_at_fork``).

        The child does not own the handlers it inherited until it creates an engine of its own
        (:meth:`take_ownership`). The parent's watchdog thread does not exist in the child, and the wakeup fd that the
        child inherited leads to the parent's watchdog: the child's signals must not wake it.
        """
        self.lock = threading.RLock()  # another thread of the parent may have held it at the time of the fork
        self.sigterm_stops = ()
        self.close_depth = self.main_thread_close_depth = 0
        self.deferred_signal = None
        self.forget_signals()
        if self.watchdog is not None:
            self.watchdog.forget_in_child()
            self.watchdog = None


class _ComposerSignalHandler:
    """The handler Composer installs for one signal. It remembers the disposition it replaced, and what that meant.

    Args:
        previous: What :func:`signal.getsignal` returned before Composer installed this handler.
        state: The process state it reads and writes (:data:`_state`; a test may pass its own).
    """

    #: The kinds of disposition Composer replaces: what the signal did before Composer's handler.
    IGNORED = 'ignored'  # SIG_IGN: keeps being ignored
    CALLABLE = 'callable'  # a handler of the user's or a framework's: it keeps being called
    KEYBOARD_INTERRUPT = 'KeyboardInterrupt'  # Python's default SIGINT handler
    EXIT = 'exit'  # the OS default (SIG_DFL): Composer exits through Python with 128 + signum

    def __init__(self, previous: _Handler, state: Optional[_ProcessState] = None):
        self.previous = previous
        self.state = _state if state is None else state
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
        # Runs on the main thread between two bytecodes, possibly while that thread holds a lock: it writes state
        # without taking the lock (single assignments) and logs nothing.
        state = self.state
        if self.kind == self.IGNORED:
            return None
        if state.is_inherited():
            return self._default_effect_in_forked_child(signum, frame)
        if state.is_stopping():
            if state.is_duplicate(signum):
                return None  # the first signal, delivered twice
            _force_quit(signum)
        if self.kind == self.CALLABLE:
            return self.call_previous(signum, frame)  # a user's handler or a framework's handler: it keeps working
        state.first_signal = (time.monotonic(), signum)
        if self.kind == self.EXIT:
            state.exit_pending = True
            if signum == signal.SIGTERM and state.sigterm_stops:
                for stop in state.sigterm_stops:  # e.g. the trainers stop after the batch in flight and checkpoint it
                    stop(signum)
                return None
        if state.main_thread_close_depth > 0:
            # Raising here would interrupt a callback's close() (an upload, a flush) and leave it half done.
            _defer_until_closed(signum, self)
            return None
        if self.kind == self.KEYBOARD_INTERRUPT:
            return self.call_previous(signum, frame)  # Python's default_int_handler: KeyboardInterrupt
        # The OS default would end the process without running ``finally`` blocks or ``atexit`` hooks. Exit through
        # Python instead, with the exit code a shell reports for death by this signal (143 for SIGTERM).
        raise SystemExit(128 + signum)

    def call_previous(self, signum: int, frame: Optional[FrameType]) -> Any:
        """Call the Python handler that Composer's replaced (``kind`` is ``CALLABLE`` or ``KEYBOARD_INTERRUPT``)."""
        previous = self.previous
        assert callable(previous), previous
        return previous(signum, frame)

    def _default_effect_in_forked_child(self, signum: int, frame: Optional[FrameType]) -> Any:
        """What Composer's inherited handler does in a forked child: never the parent's shutdown path.

        A forked child did not create the parent's engines: exiting through Python there would run the inherited exit
        hooks (the parent's engines would close, callbacks would flush and upload, from the child). Instead, a handler
        that was installed before Composer's (the user's, Python's ``KeyboardInterrupt``) is called, and otherwise the
        signal has its OS default effect: the child terminates at once, as it would without Composer.
        """
        if self.kind != self.EXIT:
            return self.call_previous(signum, frame)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return None

    def __repr__(self) -> str:
        return f'<composer signal handler, previous={self.previous!r}>'


class SignalHandlerLease:
    """A hold on Composer's signal handlers, returned by :func:`acquire_signal_handlers`.

    The handlers are restored when the last lease is released. :meth:`release` is idempotent and thread-safe.
    """

    def __init__(self, holds_handlers: bool, reason: Optional[str] = None, warned: bool = False):
        self._holds_handlers = holds_handlers
        self._reason = reason
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

    @property
    def warned(self) -> bool:
        """Whether Composer's once-per-process warning covers why this lease holds nothing.

        That warning names the cause and what to do: no second warning about the same situation should be logged.
        """
        return self._warned

    def release(self) -> None:
        """Release this lease. When it is the last one, restore the handlers Composer replaced.

        Unless Composer's handler has decided that the process exits (it raised or deferred ``SystemExit``): then
        the handlers stay until the interpreter exits, so that a repeat of the signal (a launcher's clean-up
        ``SIGTERM`` to a rank that is already exiting) gives the same exit code instead of the OS default.
        """
        with _state.lock:
            if not self._holds_handlers:
                return
            self._holds_handlers = False
            if self._pid != os.getpid():
                return  # the parent's lease, released in a forked child (an inherited engine closes there)
            _state.holders -= 1
            if not _state.is_held() and not _state.exit_pending:
                _restore_locked()
                _state.forget_signals()

    def __repr__(self) -> str:
        return f'SignalHandlerLease(holds_handlers={self._holds_handlers})'


def read_bool_env(name: str, true_effect: str, false_effect: str) -> Optional[bool]:
    """Read a yes/no environment variable: ``None`` when unset, otherwise its value as a bool.

    Args:
        name (str): The variable.
        true_effect (str): What a true value does, for the error message (e.g. ``"install the handlers"``).
        false_effect (str): What a false value does, for the error message.

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
    return read_bool_env(
        SIGNAL_HANDLING_ENV_VAR,
        true_effect="install Composer's SIGTERM/SIGINT handlers",
        false_effect='leave signals alone (the default is to install them)',
    )


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

    Raises:
        ValueError: If ``COMPOSER_SIGNAL_HANDLING`` or ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` has an invalid value.
    """
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
    with _state.lock:
        _state.take_ownership()
        if not _state.installed:
            error = _install_locked()
            if error is not None:
                _warn_once(error)
                return SignalHandlerLease(holds_handlers=False, reason=error, warned=True)
        if not _state.is_held():  # the first holder, also a forked child that takes over
            _state.forget_signals()  # a new engine: the process went on after any stop (a caught SystemExit)
            _attach_watchdog_locked()  # detached again when the handlers are restored
        _state.close_timeout = close_timeout
        _state.holders += 1
        return SignalHandlerLease(holds_handlers=True)


def _install_locked() -> Optional[str]:
    """Install a handler for every signal in :data:`HANDLED_SIGNALS`, all or nothing.

    Returns:
        Optional[str]: ``None`` on success, otherwise why the handlers could not be installed.
    """
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
    _state.installed.update(installed)
    if not _state.atexit_registered:
        # Registered once, before any engine registers its own exit hook: atexit runs hooks in LIFO order, so the
        # engines close (with the handlers still in place) before the original handlers are put back.
        atexit.register(_restore_at_exit)
        _state.atexit_registered = True
    return None


def _restore_locked() -> None:
    """Put back the handlers Composer replaced, leaving any handler that someone else installed since."""
    for signum, handler in list(_state.installed.items()):
        try:
            if signal.getsignal(signum) is handler:
                signal.signal(signum, handler.previous)
        except (ValueError, OSError, RuntimeError):
            # Typically: the last engine closed on a thread other than the main one. Composer's handler keeps
            # delegating to the one it replaced; it is restored by the next release on the main thread or at exit.
            log.debug('Could not restore the handler for %s yet.', signal.Signals(signum).name, exc_info=True)
            continue
        del _state.installed[signum]
    if not _state.installed and _state.watchdog is not None:
        _state.watchdog.detach()


def _restore_at_exit() -> None:
    """Put back the original handlers at interpreter exit, unless Composer's handler is why the process exits.

    Then no later signal may change the exit status (``128 + signum``) that the process decided on: a launcher's
    clean-up ``SIGTERM`` reaches a rank late in its shutdown, and a scheduler reads "preempted" from 143. The signals
    that Composer handles with an exit or ``KeyboardInterrupt`` are ignored from here on, because ``SIG_IGN`` is the
    one disposition that CPython's finalization leaves in place: it puts the OS default back over every Python
    handler, and a signal after that, during the C-level teardown (native libraries' exit handlers), killed the
    process by that signal instead.
    """
    with _state.lock:
        if not _state.installed:
            return
        if not _state.exit_pending:
            _state.holders = 0
            _state.kept_until_exit = False
            _restore_locked()
            return
        for signum, handler in _state.installed.items():
            if handler.stops_the_process and signal.getsignal(signum) is handler:
                signal.signal(signum, signal.SIG_IGN)


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
    with _state.lock:  # many threads may get here at once; exactly one of them logs
        if _state.warned:
            return
        _state.warned = True
    log.warning(
        'Composer could not install its SIGTERM/SIGINT handlers: %s. Training continues, but if this process receives '
        'SIGTERM, the engine will not close cleanly: checkpoints and loggers may not be flushed%s. To fix this, create '
        'the Trainer on the main thread; otherwise handle SIGTERM yourself: %s. To opt out and silence this warning, '
        'pass enable_signal_handling=False to the Trainer or set %s=0. This warning is logged once per process.',
        reason,
        _state.stop_advice.lost,
        _state.stop_advice.handle_sigterm,
        SIGNAL_HANDLING_ENV_VAR,
    )


def _inform_once(reason: str) -> None:
    with _state.lock:
        if _state.informed:
            return
        _state.informed = True
    log.info(
        'Composer left SIGTERM/SIGINT handling alone because %s. %s; pass enable_signal_handling=True or set %s=1 to '
        'install Composer\'s handlers anyway.',
        reason,
        _state.stop_advice.stop,
        SIGNAL_HANDLING_ENV_VAR,
    )


@contextlib.contextmanager
def intercept_sigterm(stop: Optional[Callable[[int], None]] = None) -> Iterator[None]:
    """While active, a ``SIGTERM`` that Composer would turn into ``SystemExit`` calls ``stop(signum)`` instead.

    Only where Composer's handler replaced the OS default: a handler of the user's or a framework's is called as
    before. ``stop`` runs inside the signal handler, between two bytecodes of the main thread: it must only assign
    (for example, set a flag that the training loop reads). From then on the process counts as stopping, so a second ``SIGTERM``
    or ``SIGINT`` force-quits. Entering the context also forgets an earlier signal that the process recovered from (a
    caught ``KeyboardInterrupt`` or ``SystemExit``), so that only a signal received from now on arms the force quit;
    with ``stop=None`` that is all it does.

    Args:
        stop (Callable[[int], None], optional): Called with the signal number instead of exiting.
    """
    with _state.lock:
        _state.forget_signals()
        if stop is not None:
            _state.sigterm_stops = (*_state.sigterm_stops, stop)
    try:
        yield
    finally:
        if stop is not None:
            with _state.lock:
                _state.sigterm_stops = tuple(s for s in _state.sigterm_stops if s is not stop)


def set_stop_advice(advice: StopAdvice) -> None:
    """Say what Composer's messages should advise where its handlers are not installed (a richer way to stop)."""
    with _state.lock:
        _state.stop_advice = advice


def keep_handlers_until_exit() -> None:
    """The process exits next because of a signal: keep Composer's handlers until the interpreter exits.

    Any ``SIGTERM`` or ``SIGINT`` from now on ends the process at once with ``128 + signum``: for example the
    ``SIGTERM`` that the ``composer`` launcher sends to the ranks still running when the first rank exits. Without
    this, the engine's close would restore the OS default, and such a signal would kill the process instead of letting
    it report ``128 + signum``. Handlers are only kept from the main thread, where they are installed and restored.
    """
    with _state.lock:
        _state.exit_pending = True
        if _state.installed and threading.current_thread() is threading.main_thread():
            _state.kept_until_exit = True


def engine_closing(close: _F) -> _F:
    """Mark the time spent in ``close`` (the :class:`.Engine`'s shutdown) as closing.

    A first ``SIGTERM`` or ``SIGINT`` that arrives while the main thread closes an engine does not interrupt the
    callbacks' ``close()`` (their uploads and flushes): the engine finishes closing, then the signal takes effect
    (``SystemExit(128 + signum)``, or ``KeyboardInterrupt``) when the outermost close returns. The close gets at most
    ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` seconds for that (:func:`resolve_close_timeout`); then the process exits with
    ``128 + signum``, and one line on stderr names what was still closing. A second one, or one while an engine closes
    after a first signal, ends the process at once with exit code ``128 + signum`` instead of waiting for slow
    callbacks or uploads. Nested closes (``Engine.close()`` calls ``Engine._close()``) count as one.
    """

    @functools.wraps(close)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        on_main_thread = threading.current_thread() is threading.main_thread()
        with _state.lock:
            _state.close_depth += 1
            _state.main_thread_close_depth += on_main_thread
        try:
            return close(*args, **kwargs)
        finally:
            with _state.lock:
                _state.close_depth -= 1
                _state.main_thread_close_depth -= on_main_thread
                outermost_on_main_thread = on_main_thread and _state.main_thread_close_depth == 0
                if outermost_on_main_thread and _state.watchdog is not None:
                    _state.watchdog.closed()
            if outermost_on_main_thread:
                _raise_deferred_signal()

    return wrapper  # type: ignore[return-value]


def _defer_until_closed(signum: int, handler: _ComposerSignalHandler) -> None:
    """Keep the effect of a signal that arrived while the main thread closes an engine until the close returns.

    At interpreter exit (the engines' exit hooks) the process is already ending: the close finishes and the exit
    goes on with its own status (an exception raised in an exit hook would only be printed).
    """
    state = handler.state
    effect = 'KeyboardInterrupt' if handler.kind == handler.KEYBOARD_INTERRUPT else f'exit code {128 + signum}'
    if threading.main_thread().is_alive():
        state.deferred_signal = (signum, handler)
    else:  # Python marks the main thread stopped before it runs the exit hooks
        effect = 'the interpreter exits'
    if state.watchdog is not None:
        state.watchdog.arm(signum)  # the close may hang: it gets at most close_timeout seconds
    _write_stderr(
        f'Composer: received {signal.Signals(signum).name} while the engine closes; {effect} once it has closed '
        f'(waiting at most {state.close_timeout:g} s, {CLOSE_TIMEOUT_ENV_VAR}). Send SIGTERM or SIGINT again to exit '
        'at once.\n',
    )


def _raise_deferred_signal() -> None:
    """Raise the effect of a signal deferred by :func:`_defer_until_closed`, if any."""
    deferred, _state.deferred_signal = _state.deferred_signal, None
    if deferred is None:
        return
    signum, handler = deferred
    if handler.kind == handler.KEYBOARD_INTERRUPT:
        handler.call_previous(signum, None)  # Python's default_int_handler raises KeyboardInterrupt
    raise SystemExit(128 + signum)


def _write_stderr(message: str) -> None:
    """Write to fd 2 without Python's buffered streams (safe in a signal handler and in a dying process)."""
    try:
        os.write(2, message.encode())
    except OSError:
        pass


def _force_quit(signum: int) -> None:
    """End the process now, with the exit code of a death by ``signum``: the second signal while stopping."""
    code = 128 + signum
    _write_stderr(
        f'Composer: received {signal.Signals(signum).name} again while stopping; exiting at once with code {code}, '
        'without waiting for the engine to close.\n',
    )
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

    ``_chained`` and ``_attached`` are written under the state's lock on the main thread. ``_deadline`` and
    ``_first_delivery`` are single assignments: by this thread, by the handler through :meth:`arm` (without the lock:
    it runs between two bytecodes of the main thread) and by :meth:`closed` (under the lock), which clears them when
    the outermost close of the main thread returns.

    Args:
        state: The process state whose closes it watches.
    """

    #: Written by :meth:`arm` to wake the thread; not a signal number.
    _WAKE = 0

    def __init__(self, state: _ProcessState) -> None:
        self._state = state
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
            self._deadline = (signum, time.monotonic() + self._state.close_timeout)
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
        state = self._state
        handler = state.installed.get(signum)
        if handler is None or not handler.stops_the_process:
            return
        if state.main_thread_close_depth == 0 or state.is_inherited():
            return
        first = self._first_delivery
        if first is None:
            self._first_delivery = (signum, now)
            if self._deadline is None:
                self._deadline = (signum, now + state.close_timeout)
        elif signum != first[0] or now - first[1] >= DUPLICATE_SIGNAL_WINDOW:
            _force_quit(signum)  # a second signal while the main thread closes, maybe blocked where no handler runs

    def _check_deadline(self, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline[1]:
            return
        if self._state.main_thread_close_depth == 0:
            self._deadline = None
            return
        signum, _ = deadline
        code = 128 + signum
        _write_stderr(
            f'Composer: {signal.Signals(signum).name} arrived while the engine was closing, and the close has not '
            f'finished after {self._state.close_timeout:g} s ({_what_is_closing()}); exiting with code {code}. To let '
            f'it take longer, set {CLOSE_TIMEOUT_ENV_VAR} (seconds).\n',
        )
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
    if _state.watchdog is None:
        try:
            _state.watchdog = _SignalWatchdog(_state)
        except (OSError, RuntimeError):  # out of fds, or at interpreter shutdown where no thread can start
            log.debug('Could not start the signal watchdog thread.', exc_info=True)
            return
    _state.watchdog.attach()


#: The signal-handling state of this process.
_state = _ProcessState()

if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_state.after_fork_in_child)
