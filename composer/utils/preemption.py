# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption: stop every rank after the batch in flight, checkpoint it, and exit as the signal would have.

* ``Trainer(save_on_preemption=True)``: while such a trainer fits, a ``SIGTERM`` that Composer would have turned into
  ``SystemExit`` requests a :class:`StopRequest` instead (:func:`handle_preemption`, through
  :func:`.signal_handling.intercept_sigterm`). The trainer stops every rank after the batch in flight, checkpoints it
  and then exits with ``SystemExit(143)`` (:func:`exit_after_preemption`). :meth:`.Trainer.request_stop` is the same
  stop without a signal, from any thread.
* ``COMPOSER_SAVE_ON_PREEMPTION`` turns it on for every Trainer whose argument is left at ``None``
  (:func:`resolve_save_on_preemption`), for frameworks that build the Trainer themselves.
* DataLoader workers of a trainer fitting with ``save_on_preemption`` block ``SIGTERM``
  (:func:`shield_dataloader_workers`): their parent stops them after saving.
* Where Composer holds no signal handlers (a Trainer created off the main thread, Ray, an opt-out),
  :func:`warn_preemption_unavailable` says what to do instead.

This module only talks to :mod:`composer.utils.signal_handling` through its public functions; importing it makes
Composer's messages point to :meth:`.Trainer.request_stop` (:func:`.signal_handling.set_stop_advice`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import composer.utils.signal_handling as _signal_handling
from composer.utils.signal_handling import (
    DISABLED_REASON,
    SignalHandlerLease,
    StopAdvice,
    intercept_sigterm,
    keep_handlers_until_exit,
    read_bool_env,
    set_stop_advice,
)

log = logging.getLogger(__name__)

__all__ = [
    'SAVE_ON_PREEMPTION_ENV_VAR',
    'StopRequest',
    'exit_after_preemption',
    'handle_preemption',
    'resolve_save_on_preemption',
    'shield_dataloader_workers',
    'warn_preemption_unavailable',
]

#: Environment variable read when ``Trainer(save_on_preemption=None)`` (the default).
SAVE_ON_PREEMPTION_ENV_VAR = 'COMPOSER_SAVE_ON_PREEMPTION'

# Where Composer's handlers are not installed, its messages point to Trainer.request_stop().
set_stop_advice(
    StopAdvice(
        lost=', and save_on_preemption cannot react to it',
        handle_sigterm=(
            'call trainer.request_stop() (from any thread, or from your own signal handler) to stop every rank after '
            'the current batch and save a checkpoint, and call trainer.close() in a `finally` block'
        ),
        stop=(
            'Call trainer.request_stop() to stop training after the current batch (with a checkpoint), and '
            'trainer.close() in a `finally` block to flush checkpoints and loggers'
        ),
    ),
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
    from_env = read_bool_env(
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


@contextlib.contextmanager
def handle_preemption(
    lease: Optional[SignalHandlerLease],
    stop_request: StopRequest,
    save_on_preemption: bool,
    dataloaders: Sequence[Any] = (),
) -> Iterator[None]:
    """A context for one ``fit()``: while it is active, ``SIGTERM`` requests ``stop_request`` instead of exiting.

    Only when ``save_on_preemption`` is set, ``lease`` holds Composer's handlers and ``SIGTERM``'s disposition before
    them was the OS default (a handler of the user's or a framework's is called as before; it can call
    :meth:`.Trainer.request_stop`). Entering the context also forgets an earlier signal that the process recovered
    from (a caught ``KeyboardInterrupt`` or ``SystemExit``), so that only a signal received from now on arms the force
    quit (see :func:`.signal_handling.intercept_sigterm`). When ``lease`` holds no handlers, only the DataLoader
    workers are shielded (for :meth:`.Trainer.request_stop`).

    Args:
        lease (SignalHandlerLease, optional): The engine's lease.
        stop_request (StopRequest): The trainer's stop request.
        save_on_preemption (bool): Whether ``SIGTERM`` requests a stop (``Trainer(save_on_preemption=...)``).
        dataloaders (Sequence): The dataloaders that this ``fit()`` may iterate: with ``save_on_preemption``, their
            workers are shielded from ``SIGTERM`` (see :func:`shield_dataloader_workers`).
    """
    shielded = dataloaders if save_on_preemption else ()
    if lease is None or not lease.holds_handlers:
        with shield_dataloader_workers(shielded):
            yield
        return
    stop: Optional[Callable[[int], None]] = stop_request.request if save_on_preemption else None
    with intercept_sigterm(stop), shield_dataloader_workers(shielded):
        yield


def exit_after_preemption() -> None:
    """Prepare this process to exit after a preemption stop: the trainer closes and raises ``SystemExit`` next.

    Composer's handlers stay installed until the interpreter exits (on the main thread, where they are installed),
    and any ``SIGTERM`` or ``SIGINT`` from now on ends the process at once with ``128 + signum``: for example the
    ``SIGTERM`` that the ``composer`` launcher sends to the ranks still running when the first rank exits. Without
    this, the engine's close would restore the OS default, and such a signal would kill the rank instead of letting
    it report 143 (see :func:`.signal_handling.keep_handlers_until_exit`).
    """
    keep_handlers_until_exit()


def warn_preemption_unavailable(lease: Optional[SignalHandlerLease]) -> None:
    """Say that ``save_on_preemption`` will not react to ``SIGTERM`` in this process, and what will.

    For a trainer with ``save_on_preemption=True`` whose engine holds no signal handlers: at INFO when the user
    disabled signal handling, as a warning otherwise. Nothing is logged when the lease's own warning (Composer could not
    install its handlers, logged once per process) already said so: one situation, one warning.
    """
    if lease is not None and lease.warned:
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


def _keep_the_old_import_paths() -> None:
    """Keep ``from composer.utils.signal_handling import StopRequest`` (and the rest of :data:`__all__`) working.

    The fork's releases before ``0.32.1+signals.5`` had these names in :mod:`composer.utils.signal_handling`, which now
    knows nothing of preemption. ``import composer`` imports this module (through the Trainer) before anything can
    import from there, so the names stay where they were, as the same objects.
    """
    for name in __all__:
        setattr(_signal_handling, name, globals()[name])


_keep_the_old_import_paths()
