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
* Force quit: a second ``SIGTERM`` or ``SIGINT`` while Composer is stopping (a stop requested by a signal, or the
  ``SystemExit`` that Composer raised), or while an engine closes after a first signal, ends the process at once with
  exit code ``128 + signum`` ("press Ctrl-C twice"), even when the main thread waits in a slow ``close()``. A repeat
  of the first signal within :data:`DUPLICATE_SIGNAL_WINDOW` seconds is the same signal delivered twice.
* Forked children (``os.fork``) inherit the handlers but never run the parent's shutdown or preemption path: there a
  signal has the effect it would have without Composer. DataLoader workers of a trainer fitting with
  ``save_on_preemption`` block ``SIGTERM`` (:func:`shield_dataloader_workers`): their parent stops them after saving.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

log = logging.getLogger(__name__)

__all__ = [
    'SIGNAL_HANDLING_ENV_VAR',
    'SignalHandlerLease',
    'StopRequest',
    'acquire_signal_handlers',
    'engine_closing',
    'exit_after_preemption',
    'handle_preemption',
    'resolve_signal_handling',
    'shield_dataloader_workers',
    'warn_preemption_unavailable',
]

#: Environment variable read when ``enable_signal_handling`` is ``None``.
SIGNAL_HANDLING_ENV_VAR = 'COMPOSER_SIGNAL_HANDLING'

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

# True in a child forked from a process that holds Composer's handlers (os.fork, multiprocessing's fork start method).
_forked_child = False

_F = TypeVar('_F', bound=Callable[..., Any])


class _ComposerSignalHandler:
    """The handler Composer installs for one signal. It remembers the disposition it replaced.

    Args:
        previous: What :func:`signal.getsignal` returned before Composer installed this handler.
    """

    def __init__(self, previous: _Handler):
        self.previous = previous

    def __call__(self, signum: int, frame: Optional[FrameType]) -> Any:
        # Runs on the main thread between two bytecodes, possibly while that thread holds a lock: it reads and writes
        # module state without taking ``_lock`` (assignments are atomic) and logs nothing.
        global _exit_pending, _first_signal
        previous = self.previous
        if previous == signal.SIG_IGN:
            return None
        if _forked_child:
            return _handle_in_forked_child(previous, signum, frame)
        first_time, first_signum = _first_signal
        if _exit_pending or (_closing_engines > 0 and first_signum != 0):
            if signum == first_signum and time.monotonic() - first_time < DUPLICATE_SIGNAL_WINDOW:
                return None  # the first signal, delivered twice
            _force_quit(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            # A user's handler or a framework's handler: it keeps working.
            return previous(signum, frame)
        _first_signal = (time.monotonic(), signum)
        if not callable(previous):
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
        if callable(previous):
            return previous(signum, frame)  # Python's default_int_handler: KeyboardInterrupt
        # The OS default would end the process without running ``finally`` blocks or ``atexit`` hooks. Exit through
        # Python instead, with the exit code a shell reports for death by this signal (143 for SIGTERM).
        raise SystemExit(128 + signum)

    def __repr__(self) -> str:
        return f'<composer signal handler, previous={self.previous!r}>'


class SignalHandlerLease:
    """A hold on Composer's signal handlers, returned by :func:`acquire_signal_handlers`.

    The handlers are restored when the last lease is released. :meth:`release` is idempotent and thread-safe.
    """

    def __init__(self, holds_handlers: bool, reason: Optional[str] = None):
        self._holds_handlers = holds_handlers
        self._reason = reason

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
            _holders -= 1
            if _holders == 0 and not _exit_pending:
                _restore_locked()
                _forget_signals()

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
        return SignalHandlerLease(holds_handlers=False, reason=reason)
    with _lock:
        if _holders == 0:
            _forget_signals()  # a new engine: the process went on after any stop (a caught SystemExit)
        if not _installed:
            error = _install_locked()
            if error is not None:
                _warn_once(error)
                return SignalHandlerLease(holds_handlers=False, reason=error)
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


def engine_closing(close: _F) -> _F:
    """Mark the time spent in ``close`` (the :class:`.Engine`'s shutdown) as closing.

    A first ``SIGTERM`` or ``SIGINT`` that arrives while the main thread closes an engine does not interrupt the
    callbacks' ``close()`` (their uploads and flushes): the engine finishes closing, then the signal takes effect
    (``SystemExit(128 + signum)``, or ``KeyboardInterrupt``) when the outermost close returns. A second one, or one
    while an engine closes after a first signal, ends the process at once with exit code ``128 + signum`` instead of
    waiting for slow callbacks or uploads.
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
    message = (
        f'Composer: received {signal.Signals(signum).name} while the engine closes; {effect} once it has closed. '
        'Send SIGTERM or SIGINT again to exit at once.\n'
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

    Logged for every trainer with ``save_on_preemption=True`` whose engine holds no signal handlers: at INFO when the
    user disabled signal handling, otherwise as a warning.
    """
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
    """Forget the parent's trainers and state in a forked child: it owns no engine, no stop and no lock holder."""
    global _lock, _forked_child, _preemption_targets, _closing_engines, _main_thread_closing, _deferred_signal
    _lock = threading.RLock()  # another thread of the parent may have held it at the time of the fork
    _forked_child = True
    _preemption_targets = ()
    _closing_engines = _main_thread_closing = 0
    _deferred_signal = None
    _forget_signals()


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
