# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Signals while an engine closes: a deferred first signal, a close bounded by the timeout, a force quit.

The runs are ``make_trainer('deterministic')`` with a :class:`~probes.Probe`, whose ``close()`` is slow or hangs.
"""

import asyncio
import os
import signal
import threading
from typing import Any, Optional

from probes import Probe, fit_and_record
from scenario_support import main, make_trainer, mark, report

from composer import Callback


class RunTimeout(Callback):
    """LLM Foundry's ``RunTimeoutCallback`` pattern: at ``fit_end``, a daemon timer sends one SIGINT after 1 s."""

    def fit_end(self, state, logger):
        timer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()


def watchdog_after_fit():
    trainer = make_trainer('deterministic', callbacks=[Probe(close_blocks='sleep')], max_duration='2ba')
    trainer.state.callbacks.append(RunTimeout())
    trainer.fit()
    mark('fitted')
    return trainer  # not closed: its engine closes in the exit hooks, where close() hangs


def hung_trainer_close(blocks: str) -> None:
    """A short fit, then ``trainer.close()``, whose callback's ``close()`` hangs as ``blocks`` says."""
    trainer = make_trainer('deterministic', callbacks=[Probe(close_blocks=blocks)], max_duration='2ba')
    trainer.fit()
    trainer.close()


def blocking_close_after_a_signal(blocks: str, trainer_kwargs: Optional[dict[str, Any]] = None) -> None:
    """Announce batch 3 (the test signals then); the close that follows blocks for minutes, as ``blocks`` says."""
    trainer = make_trainer(
        'deterministic',
        callbacks=[Probe(announce_at=3, pause=2, close_blocks=blocks)],
        **(trainer_kwargs or {}),
    )
    fit_and_record(trainer, 'stopped')


def slow_close_after_fit(close: bool):
    """A short fit whose callback's close() takes 2 s (a flush, an upload), marking ``close`` and ``closed``.

    With ``close``, ``trainer.close()`` follows, marking what it raised; otherwise the engine closes at exit.
    """
    trainer = make_trainer('deterministic', callbacks=[Probe(close_seconds=2)], max_duration='2ba')
    trainer.fit()
    if not close:
        return trainer
    try:
        trainer.close()
    except BaseException as e:
        mark('raised', f'{type(e).__name__} {getattr(e, "code", "")}'.strip())
        raise
    mark('raised', 'nothing')
    return trainer


def asyncio_keeps_its_wakeup_fd() -> None:

    async def run():
        loop = asyncio.get_running_loop()
        received = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, received.set)  # asyncio learns of the signal through its wakeup fd
        asyncio_fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(asyncio_fd)
        trainer = make_trainer('deterministic', callbacks=[Probe()], max_duration='1ba')
        took_wakeup_fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(took_wakeup_fd)
        os.kill(os.getpid(), signal.SIGUSR1)
        try:
            await asyncio.wait_for(received.wait(), 10)
            seen = True
        except asyncio.TimeoutError:
            seen = False
        trainer.close()
        restored = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(restored)
        report(seen=seen, replaced=took_wakeup_fd != asyncio_fd, restored=restored == asyncio_fd)
        loop.remove_signal_handler(signal.SIGUSR1)

    asyncio.run(run())


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
