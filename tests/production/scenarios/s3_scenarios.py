# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemptible runs that save to S3 (moto's server on loopback, see ``tests/production/s3_server.py``).

The runs are ``make_trainer('deterministic')`` with ``save_folder='s3://<bucket>/run'``: Composer writes each
checkpoint locally (``./run``), then uploads it and the remote latest pointer (``run/latest-rank0.pt.symlink``, an
object holding the checkpoint's key) from spawned processes. The endpoint and credentials come from the environment
(``S3_ENDPOINT_URL``, ``AWS_*``). Every scenario may run in ``workdir`` (created if needed) instead of the test's
directory: a resumed run there starts from an empty local folder and must download its checkpoint.

Run by path from the test's directory; :mod:`scenario_support` and :mod:`probes` come from
``tests/signal_handling/scenarios``. Composer's uploader starts ``spawn`` processes (a ``Manager`` when the Trainer is
made, the upload and check workers at the first upload), which run this script again as ``__mp_main__``: what runs
is under the ``__main__`` guard, and there this script does not import Composer (:mod:`probes` does), so that the
``Manager`` starts in a fraction of a second, not after an import of Composer (half a minute on a loaded machine).
"""

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'signal_handling' / 'scenarios'))

from scenario_support import main, make_trainer, mark  # noqa: E402

if __name__ == '__mp_main__':  # a process spawned by Composer's uploader: it needs nothing from this script
    Probe = object
else:
    from probes import Probe, fit_and_record  # noqa: E402

#: Written by the rank whose trainer got the ``SIGTERM``: the other ranks stop holding.
SIGNALLED = 'signalled'

#: The remote latest pointer of rank 0 of a run whose ``save_folder`` is ``s3://<bucket>/run``.
POINTER = 'run/latest-rank0.pt.symlink'


class HoldUntilSignalled(Probe):
    """:class:`~probes.Probe` that marks ``fit_start`` (its batch) and holds at the end of batch ``hold_at``.

    The hold lasts until this process's trainer is preempted (Composer's SIGTERM handler ran: it then writes
    :data:`SIGNALLED`) or another rank wrote :data:`SIGNALLED`, at most ``hold_seconds``, so that the test's signal
    arrives inside batch ``hold_at``'s callbacks however loaded the machine: the run stops after that batch. The
    ``training`` marker (the pid) tells the test that the hold began.

    Args:
        hold_at: the batch at whose end the ranks hold (``None``: no hold).
        hold_seconds: the longest hold.
    """

    def __init__(self, hold_at: Optional[int] = None, hold_seconds: float = 120.0):
        super().__init__()
        self.trainer: Any = None
        self.hold_at = hold_at
        self.hold_seconds = hold_seconds

    def fit_start(self, state, logger):
        mark('fit_start', int(state.timestamp.batch))

    def _preempted(self) -> bool:
        stop_request = getattr(self.trainer, '_stop_request', None)  # None on upstream Composer
        return bool(stop_request is not None and stop_request.preempted)

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) != self.hold_at:
            return
        mark('training', os.getpid())
        deadline = time.monotonic() + self.hold_seconds
        while time.monotonic() < deadline and not os.path.exists(SIGNALLED):
            if self._preempted():
                with open(f'{SIGNALLED}.tmp{os.getpid()}', 'w') as f:
                    f.write(str(os.getpid()))
                os.replace(f'{SIGNALLED}.tmp{os.getpid()}', SIGNALLED)
                return
            time.sleep(0.02)


def _in(workdir: Optional[str]) -> None:
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)


def _never(state, event) -> bool:
    return False


def fit_s3(
    tag: str = 'run',
    hold_at: Optional[int] = None,
    trainer_kwargs: Optional[dict[str, Any]] = None,
    workdir: Optional[str] = None,
    save_at_end: bool = True,
) -> None:
    """Fit ``make_trainer('deterministic', **trainer_kwargs)``; rank 0's final weights go to ``weights_<tag>.pt``.

    Args:
        tag: names the final weights.
        hold_at: hold at the end of that batch until preempted (see :class:`HoldUntilSignalled`).
        trainer_kwargs: for the Trainer (``save_folder``, ``run_name``, ``autoresume``, ``save_on_preemption``).
        workdir: the directory to run in (autoresume downloads into it).
        save_at_end: whether the run saves (and uploads) a checkpoint when it ends, as the recipe's far-away
            ``save_interval`` does; ``False``: no periodic checkpoint at all (a preemption still saves one).
    """
    _in(workdir)
    probe = HoldUntilSignalled(hold_at=hold_at)
    kwargs = dict(trainer_kwargs or {})
    if not save_at_end:
        kwargs['save_interval'] = _never
    trainer = make_trainer('deterministic', callbacks=[probe], **kwargs)
    probe.trainer = trainer
    fit_and_record(trainer, tag)


class SecondSaveOncePointed(Probe):
    """Saves at batch ``first``, then once the bucket's latest pointer names that checkpoint, at the next batch.

    Between the two, each batch waits ``pace`` seconds (at most ``wait_seconds`` in all): Composer uploads the
    pointer only after a background check has seen the checkpoint in the bucket, at a later ``BATCH_END``. The
    batch of the second save is marked ``second_save``; ``fit_start`` marks the batch ``fit()`` starts from.

    Args:
        first: the batch of the first checkpoint.
        pace: seconds per batch while waiting for the pointer.
        wait_seconds: the longest wait for the pointer.
    """

    def __init__(self, first: int, pace: float = 0.2, wait_seconds: float = 150.0):
        super().__init__()
        self.first = first
        self.pace = pace
        self.wait_seconds = wait_seconds
        self.saves = {first}
        self.deadline: Optional[float] = None
        self.client: Any = None
        self.bucket = ''

    def save_interval(self, state, event) -> bool:
        from composer.core import Event
        return event == Event.BATCH_CHECKPOINT and int(state.timestamp.batch) in self.saves

    def fit_start(self, state, logger):
        mark('fit_start', int(state.timestamp.batch))

    def _pointer(self) -> Optional[str]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=POINTER)['Body'].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None

    def batch_end(self, state, logger):
        batch = int(state.timestamp.batch)
        if batch <= self.first or len(self.saves) > 1:
            return
        if self.deadline is None:
            self.deadline = time.monotonic() + self.wait_seconds
        if self._pointer() == f'run/ep0-ba{self.first}-rank0.pt' or time.monotonic() > self.deadline:
            self.saves.add(batch)
            mark('second_save', batch)
        else:
            time.sleep(self.pace)


def two_saves(
    bucket: str,
    first: int = 4,
    trainer_kwargs: Optional[dict[str, Any]] = None,
    workdir: Optional[str] = None,
    pointer_check_seconds: Optional[float] = None,
) -> None:
    """Save at batch ``first`` and, once its pointer is in ``bucket``, at a later batch (:class:`SecondSaveOncePointed`).

    Args:
        bucket: the bucket of ``save_folder`` (the scenario reads the pointer with boto3, at ``S3_ENDPOINT_URL``).
        first: the batch of the first checkpoint.
        trainer_kwargs: for the Trainer (``save_folder``, ``run_name``, a bigger model: ``features``, ``hidden``).
        workdir: the directory to run in.
        pointer_check_seconds: how often Composer's background check looks for an uploaded checkpoint before it
            uploads the pointer (``CheckpointSaver._symlink_upload_wait_before_next_try_in_seconds``, 30 s by
            default, which Composer's own tests shorten too); ``None``: Composer's default.
    """
    import boto3
    _in(workdir)
    saver = SecondSaveOncePointed(first)
    saver.client = boto3.session.Session().client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL'])
    saver.bucket = bucket
    kwargs = {'save_interval': saver.save_interval, **(trainer_kwargs or {})}
    trainer = make_trainer('deterministic', callbacks=[saver], **kwargs)
    if pointer_check_seconds is not None:
        trainer._checkpoint_saver._symlink_upload_wait_before_next_try_in_seconds = pointer_check_seconds
    fit_and_record(trainer, 'run')


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
