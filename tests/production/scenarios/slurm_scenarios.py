# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The training that the SLURM jobs of ``tests/production/test_slurm.py`` run, under the ``composer`` launcher.

``srun composer -n 2 ... slurm_scenarios.py fit '<JSON>'``: ``make_trainer('deterministic')`` on 256 samples (32
batches per rank and epoch with two ranks, two epochs) with the signal tests' :class:`~probes.Probe` (it marks the batch
where ``fit()`` ended) and, in the job that is preempted, batches slowed down by a sleep so that the signal always
arrives while it trains. The sleep changes no weights: a resumed or uninterrupted run without it ends the same.
"""

import sys
import time
from pathlib import Path
from typing import Any, Optional

# The signal tests' scenario helpers (the one trainer factory, the markers, the probe), by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'signal_handling' / 'scenarios'))

from probes import Probe, fit_and_record  # noqa: E402
from scenario_support import main, make_trainer, mark  # noqa: E402

from composer import Callback  # noqa: E402

#: Training samples: 32 batches of 4 per rank and epoch on two ranks, enough batches for a signal to land mid-training.
SAMPLES = 256


class SlowBatches(Callback):
    """Marks every batch (``batch``: its number) at its end, then sleeps ``seconds``: a job that trains for a while.

    Args:
        seconds: the sleep after each batch.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def batch_end(self, state, logger):
        mark('batch', int(state.timestamp.batch))
        time.sleep(self.seconds)


def fit(seconds_per_batch: float = 0.0, trainer_kwargs: Optional[dict[str, Any]] = None, tag: str = 'stopped') -> None:
    """Fit the deterministic recipe on :data:`SAMPLES` samples; ``tag`` names its final weights.

    Args:
        seconds_per_batch: see :class:`SlowBatches`.
        trainer_kwargs: for the ``Trainer`` (``save_on_preemption``, ``autoresume``, ``run_name``, ``save_folder``).
        tag: the final weights go to ``weights_<tag>.pt`` (rank 0).
    """
    trainer = make_trainer(
        'deterministic',
        samples=SAMPLES,
        callbacks=[Probe(), SlowBatches(seconds_per_batch)],
        **(trainer_kwargs or {}),
    )
    fit_and_record(trainer, tag)


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
