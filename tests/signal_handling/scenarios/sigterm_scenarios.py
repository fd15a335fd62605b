# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A fit that trains "forever" (slowly), announcing progress and recording the closing callbacks in marker files."""

import os
import signal
import sys
import time
from typing import Any, Optional

from scenario_support import RANK, main, make_trainer, read_stdin_in_a_native_exit_handler

from composer import Callback


class Recorder(Callback):
    """Writes ``training.rank<R>`` (the pid) at batch 2, ``close.rank<R>`` and ``post_close.rank<R>``."""

    def __init__(self, marker_dir: str):
        self.marker_dir = marker_dir

    def mark(self, name: str) -> None:
        with open(os.path.join(self.marker_dir, f'{name}.rank{RANK}'), 'w') as f:
            f.write(str(os.getpid()))

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            self.mark('training')
        time.sleep(0.05)

    def close(self, state, logger):
        self.mark('close')

    def post_close(self):
        self.mark('post_close')


def long_fit(
    trainer_kwargs: Optional[dict[str, Any]] = None,
    marker_dir: str = '.',
    users_handler_exits: Optional[int] = None,
    read_stdin_at_exit: bool = False,
) -> None:
    """Fit for 100000 batches.

    Args:
        trainer_kwargs: the Trainer's arguments.
        marker_dir: where :class:`Recorder` writes its markers.
        users_handler_exits: a SIGTERM handler of the user's exits with that code.
        read_stdin_at_exit: after finalization, the process waits in C until its stdin is closed
            (:func:`~scenario_support.read_stdin_in_a_native_exit_handler`).
    """
    if read_stdin_at_exit:
        read_stdin_in_a_native_exit_handler()
    if users_handler_exits is not None:

        def users_handler(signum, frame):
            with open('user_handler.rank0', 'w') as f:
                f.write('called')
            sys.exit(users_handler_exits)

        signal.signal(signal.SIGTERM, users_handler)
    trainer = make_trainer(callbacks=[Recorder(marker_dir)], max_duration='100000ba', **(trainer_kwargs or {}))
    trainer.fit()


if __name__ == '__main__':
    main(__name__)
