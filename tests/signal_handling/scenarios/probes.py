# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The callback that the signal scenarios steer runs with, and how they fit: import it where Composer may be imported.

:class:`Probe` signals or pauses at chosen points and marks, in marker files, what the tests check; :func:`fit_and_record`
marks how ``fit()`` ended.
"""

import os
import signal
import threading
import time
from typing import Optional

from scenario_support import RANK, block_in_c, mark

from composer import Callback


class Probe(Callback):
    """Signals or pauses at chosen points; marks ``fit_end`` (the batch), ``close`` and ``post_close``.

    Args:
        signal_at: SIGTERM to this process inside that batch, after its backward pass (on ``signal_rank``).
        signal_rank: the rank that signals itself.
        announce_at: write a ``training`` marker (the pid) at the end of that batch, then pause ``pause`` seconds
            (the test signals meanwhile, while the batch's callbacks run).
        pause: see ``announce_at``.
        close_blocks: ``None``, ``'sleep'``, ``'join'`` or ``'in C'``: a ``close()`` that takes minutes.
        close_seconds: a ``close()`` that takes that long (a flush, an upload), marking ``closed`` after it.
    """

    def __init__(
        self,
        signal_at: Optional[int] = None,
        signal_rank: str = '0',
        announce_at: Optional[int] = None,
        pause: float = 0.0,
        close_blocks: Optional[str] = None,
        close_seconds: float = 0.0,
    ):
        self.signal_at = signal_at
        self.signal_rank = signal_rank
        self.announce_at = announce_at
        self.pause = pause
        self.close_blocks = close_blocks
        self.close_seconds = close_seconds

    def after_backward(self, state, logger):
        if int(state.timestamp.batch) == self.signal_at and RANK == self.signal_rank:
            os.kill(os.getpid(), signal.SIGTERM)

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.announce_at:
            mark('training', os.getpid())
            time.sleep(self.pause)  # the test signals now, while the batch's callbacks run

    def fit_end(self, state, logger):
        mark('fit_end', int(state.timestamp.batch))

    def close(self, state, logger):
        mark('close')
        if self.close_seconds:
            time.sleep(self.close_seconds)
            mark('closed')
        if self.close_blocks == 'sleep':
            time.sleep(300)
        elif self.close_blocks == 'join':  # like waiting for an upload thread
            worker = threading.Thread(target=time.sleep, args=(300,), daemon=True)
            worker.start()
            worker.join()
        elif self.close_blocks == 'in C':
            block_in_c()

    def post_close(self):
        mark('post_close')


def fit_and_mark_exit(trainer) -> None:
    """Fit; mark how ``fit()`` ended: ``returned``, or SystemExit's code (then re-raised)."""
    try:
        trainer.fit()
    except SystemExit as e:
        mark('exit', e.code)
        raise
    mark('exit', 'returned')


def fit_and_record(trainer, tag: str) -> None:
    """Fit (:func:`fit_and_mark_exit`) and save rank 0's final weights."""
    import torch
    fit_and_mark_exit(trainer)
    if RANK == '0':
        torch.save(trainer.state.model.state_dict(), f'weights_{tag}.pt')
