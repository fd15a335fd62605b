# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Forked children, by owner: a child with a Trainer of its own gets Composer's behaviour, any other the OS default.

The test signals the child (its pid in the marker ``child.rank0``, or ``child/training.rank0``); the parent marks the
child's exit status in ``child_status.rank0``.
"""

import multiprocessing
import os
import time
from typing import Any, Optional

from probes import Probe, fit_and_record
from scenario_support import main, make_trainer, mark

from composer import Callback


def _wait_for_child(pid: int) -> None:
    """Wait up to 30 s for the child to end (the parent trains on afterwards); mark its exit status."""
    done, status = 0, 0
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    mark('child_status', os.waitstatus_to_exitcode(status) if done else 'alive')


class Fork(Callback):
    """At the end of batch 2, fork a child that announces itself and waits to be signalled; wait for its end."""

    def __init__(self, start: str):
        self.start = start

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) != 2:
            return
        if self.start == 'multiprocessing':
            process = multiprocessing.get_context('fork').Process(target=_announce_and_wait)
            process.start()
            process.join(150)
            mark('child_status', process.exitcode)
            return
        pid = os.fork()
        if pid == 0:  # the child
            _announce_and_wait()
            os._exit(0)
        mark('forked', pid)
        _wait_for_child(pid)


def _announce_and_wait() -> None:
    mark('child', os.getpid())
    time.sleep(300)


def fork_during_fit(start: str, trainer_kwargs: Optional[dict[str, Any]] = None) -> None:
    """A child forked during a 4-batch fit (by ``os.fork`` or ``multiprocessing``) only inherited the handlers."""
    trainer = make_trainer('deterministic', callbacks=[Probe()], max_duration='4ba', **(trainer_kwargs or {}))
    trainer.state.callbacks.append(Fork(start))
    fit_and_record(trainer, 'parent')
    trainer.close()


def forked_child_with_its_own_trainer(
    start: str,
    parent_trainer: bool,
    child_kwargs: Optional[dict[str, Any]] = None,
) -> None:
    """A parent (with ``parent_trainer``, holding a Trainer of its own) forks a child that fits its own in ./child."""

    def child():
        os.makedirs('child', exist_ok=True)
        os.chdir('child')
        trainer = make_trainer('deterministic', callbacks=[Probe(announce_at=3, pause=3)], **(child_kwargs or {}))
        fit_and_record(trainer, 'child')

    def exit_code_of_child():
        # As multiprocessing does: the child's trainer is released (and its engine closed) before the child ends.
        try:
            child()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0

    parent = make_trainer('deterministic', callbacks=[Probe()], save_folder=None) if parent_trainer else None
    if start == 'multiprocessing':
        process = multiprocessing.get_context('fork').Process(target=child)
        process.start()
        process.join(150)
        mark('child_status', process.exitcode)
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(exit_code_of_child())
        mark('child_status', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    if parent is not None:
        parent.close()


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
