# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption with FSDP2 sharded checkpoints: 2 CPU (gloo) ranks under the ``composer`` launcher.

The run is ``make_trainer('deterministic')`` with ``parallelism_config={'fsdp': {'state_dict_type': 'sharded'}}``;
the test sets ``FSDP_VERSION=2`` in the environment (FSDP1 needs CUDA). Each checkpoint is a folder
(``checkpoints/ep0-ba6/``) of one ``__{rank}_0.distcp`` file per rank and the ``.metadata`` written last, and
``latest-rank{rank}.pt`` is a symlink to that folder.
"""

import os
import time
from typing import Any, Optional

from probes import Probe, fit_and_mark_exit
from scenario_support import RANK, main, make_trainer, mark

from composer import Callback

#: The Trainer's arguments of a sharded FSDP2 run (with ``FSDP_VERSION=2`` in the environment).
SHARDED = {'parallelism_config': {'fsdp': {'state_dict_type': 'sharded'}}}


class MarkFitStart(Callback):
    """Marks ``fit_start``: the batch count that ``fit()`` starts from (0, or the batch of the checkpoint resumed)."""

    def fit_start(self, state, logger):
        mark('fit_start', int(state.timestamp.batch))


class HoldUntilGo(Callback):
    """At the end of batch ``at``, mark ``training`` (the pid) and wait until the file ``go`` exists (at most 300 s).

    The test signals a rank while every rank holds, then creates ``go``: the signal comes mid-fit however slowly the
    ranks started (a fixed pause is not enough on a loaded machine).
    """

    def __init__(self, at: int):
        self.at = at

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.at:
            mark('training', os.getpid())
            deadline = time.monotonic() + 300
            while not os.path.exists('go') and time.monotonic() < deadline:
                time.sleep(0.02)


def local_shards(trainer) -> dict[str, Any]:
    """This rank's shards of the model's parameters and of the optimizer's state, as plain tensors."""
    import torch
    from torch.distributed.tensor import DTensor

    def local(value: Any) -> Any:
        return value.to_local().clone() if isinstance(value, DTensor) else value

    shards = {f'model.{name}': local(p.detach()) for name, p in trainer.state.model.named_parameters()}
    names = {id(p): name for name, p in trainer.state.model.named_parameters()}
    for optimizer in trainer.state.optimizers:
        for parameter, values in optimizer.state.items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    shards[f'optimizer.{names[id(parameter)]}.{key}'] = local(value)
    return shards


def fit_sharded(
    hold_at: Optional[int] = None,
    probe: Optional[dict[str, Any]] = None,
    trainer_kwargs: Optional[dict[str, Any]] = None,
    tag: str = 'stopped',
    folder: str = '.',
) -> None:
    """Fit the sharded run with ``Probe(**probe)`` and ``trainer_kwargs``; save this rank's shards as ``tag``.

    With ``hold_at``, every rank holds at the end of that batch until the test creates ``go`` (:class:`HoldUntilGo`).
    Runs in ``folder`` (marker files, checkpoints). Marks ``exit`` (``returned`` or SystemExit's code); after a
    return, each rank saves :func:`local_shards` to ``shards_{tag}.rank{rank}.pt``.
    """
    import torch

    os.chdir(folder)

    callbacks = [Probe(**(probe or {})), MarkFitStart()] + ([HoldUntilGo(hold_at)] if hold_at is not None else [])
    trainer = make_trainer('deterministic', callbacks=callbacks, **SHARDED, **(trainer_kwargs or {}))
    fit_and_mark_exit(trainer)
    torch.save(local_shards(trainer), f'shards_{tag}.rank{RANK}.pt')
    trainer.close()


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
