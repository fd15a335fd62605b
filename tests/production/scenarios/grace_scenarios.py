# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A preemption checkpoint that takes longer than the launcher's default clean-up wait (``composer --cleanup_timeout``).

The run is ``make_trainer('deterministic')`` on two ranks with ``save_on_preemption``, a periodic checkpoint at
batch 2 and :class:`SlowToSave`, a callback whose ``state_dict()`` (part of every checkpoint) takes ``save_seconds``
once the test has created ``slow-save`` in the run's folder (right after it signalled the launcher): only the
preemption checkpoint is slow. At the end of batch 3 every rank holds until that file exists, so the SIGTERM always
arrives mid-fit.

Run by path from the test's directory; :mod:`scenario_support` and :mod:`probes` come from
``tests/signal_handling/scenarios``.
"""

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'signal_handling' / 'scenarios'))

from probes import Probe, fit_and_record  # noqa: E402
from scenario_support import main, make_trainer, mark  # noqa: E402

from composer import Callback, Event  # noqa: E402

#: Created by the test right before it signals the launcher.
SLOW_SAVE = 'slow-save'


class SlowToSave(Callback):
    """Holds at the end of batch ``hold_at`` until ``slow-save`` exists; then its ``state_dict()`` is slow."""

    def __init__(self, save_seconds: float, hold_at: Optional[int] = 3):
        self.save_seconds = save_seconds
        self.hold_at = hold_at

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.hold_at:
            mark('holding', os.getpid())
            deadline = time.monotonic() + 300
            while not os.path.exists(SLOW_SAVE) and time.monotonic() < deadline:
                time.sleep(0.05)

    def state_dict(self) -> dict[str, Any]:
        if os.path.exists(SLOW_SAVE):
            mark('slow_save_started')
            time.sleep(self.save_seconds)  # a large checkpoint, a slow disk
            mark('slow_save_done')
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _only_at_batch_2(state, event) -> bool:
    return event == Event.BATCH_CHECKPOINT and int(state.timestamp.batch) == 2


def preemptible_fit(save_seconds: float, tag: str = 'stopped', autoresume: bool = False) -> None:
    """Fit with ``save_on_preemption``, a checkpoint at batch 2 and a preemption checkpoint of ``save_seconds``."""
    trainer = make_trainer(
        'deterministic',
        callbacks=[Probe(), SlowToSave(save_seconds)],
        save_on_preemption=True,
        save_interval=_only_at_batch_2,
        save_num_checkpoints_to_keep=-1,
        run_name='grace',
        autoresume=autoresume,
    )
    fit_and_record(trainer, tag)


def uninterrupted_fit() -> None:
    """The same run without checkpoints and without a signal: the weights a resumed run must end with."""
    trainer = make_trainer('deterministic', callbacks=[SlowToSave(0, hold_at=None)], save_folder=None)
    fit_and_record(trainer, 'reference')


if __name__ == '__main__':
    main(__name__)
