# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemptible runs under a launcher: ``torchrun`` restarting its workers, two ``composer`` launchers as two nodes.

The runs are ``make_trainer('deterministic')`` (64 samples in batches of 4: 8 batches per rank and epoch on two
ranks, two epochs) with :class:`~probes.Probe`'s marks, plus a ``fit_start`` mark (the batch that ``fit()`` starts
from and the torchrun restart round) and a hold: at the end of batch ``hold_at`` every rank waits until a ``SIGTERM``
has reached one of them, so that the test's signal always arrives mid-fit, however loaded the machine.

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

#: Written by the rank that got the ``SIGTERM`` (its pid): the other ranks stop holding, and a restarted round
#: (which finds it) does not hold again.
SIGNALLED = 'signalled'


class HoldUntilSignalled(Probe):
    """:class:`~probes.Probe` that marks ``fit_start`` and holds every rank at the end of batch ``hold_at``.

    The hold lasts until this rank's trainer is preempted by a ``SIGTERM`` (it then writes :data:`SIGNALLED`) or
    another rank wrote :data:`SIGNALLED`, at most ``hold_seconds``. The ``training`` marker (the pid) tells the test
    that the hold began. Nothing holds once :data:`SIGNALLED` exists (a restarted or resumed run).

    Args:
        trainer: set after the trainer is made (the hold reads whether its stop request was preempted).
        hold_at: the batch at whose end the ranks hold.
        hold_seconds: the longest hold.
    """

    def __init__(self, hold_at: int, hold_seconds: float = 120.0):
        super().__init__()
        self.trainer: Any = None
        self.hold_at = hold_at
        self.hold_seconds = hold_seconds

    def fit_start(self, state, logger):
        mark('fit_start', f"{int(state.timestamp.batch)} {os.environ.get('TORCHELASTIC_RESTART_COUNT', '-')}")

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) != self.hold_at or os.path.exists(SIGNALLED):
            return
        mark('training', os.getpid())
        deadline = time.monotonic() + self.hold_seconds
        while time.monotonic() < deadline and not os.path.exists(SIGNALLED):
            if self.trainer._stop_request.preempted:  # this rank got the SIGTERM (Composer's handler ran)
                with open(f'{SIGNALLED}.tmp{os.getpid()}', 'w') as f:
                    f.write(str(os.getpid()))
                os.replace(f'{SIGNALLED}.tmp{os.getpid()}', SIGNALLED)
                return
            time.sleep(0.02)


def fit_preemptible(
    tag: str = 'run',
    hold_at: Optional[int] = None,
    trainer_kwargs: Optional[dict[str, Any]] = None,
) -> None:
    """Fit ``make_trainer('deterministic')`` with ``trainer_kwargs``; rank 0's final weights go to ``weights_<tag>.pt``.

    Args:
        tag: names the final weights.
        hold_at: hold every rank at the end of that batch until one of them is preempted (see
            :class:`HoldUntilSignalled`); ``None``: no hold.
        trainer_kwargs: for the Trainer (``save_on_preemption``, ``autoresume``, ``run_name``, ...).
    """
    probe = HoldUntilSignalled(hold_at=-1 if hold_at is None else hold_at)
    try:
        trainer = make_trainer('deterministic', callbacks=[probe], **(trainer_kwargs or {}))
    except Exception as e:  # e.g. init_process_group in a torchrun restart round: the test tells the known failure
        message = str(e).replace('\n', ' ')
        mark('init_failed', f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '-')} {type(e).__name__}: {message}")
        raise
    probe.trainer = trainer
    fit_and_record(trainer, tag)


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
