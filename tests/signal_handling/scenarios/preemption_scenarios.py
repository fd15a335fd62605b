# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption that loses nothing: ``save_on_preemption`` and ``Trainer.request_stop()``.

The runs are ``make_trainer('deterministic')`` with a :class:`~probes.Probe`; the test reads the marker files.
"""

import os
import threading
import time
from typing import Any, Optional

from probes import Probe, fit_and_record
from scenario_support import LogCollector, main, make_trainer, mark, report, warnings_seen

from composer import Callback


def fit_with_probe(
    probe: Optional[dict[str, Any]] = None,
    trainer_kwargs: Optional[dict[str, Any]] = None,
    tag: str = 'stopped',
) -> None:
    """Fit a run with ``Probe(**probe)`` and the Trainer's ``trainer_kwargs``; ``tag`` names its final weights."""
    trainer = make_trainer('deterministic', callbacks=[Probe(**(probe or {}))], **(trainer_kwargs or {}))
    fit_and_record(trainer, tag)


def request_stop_from_another_thread() -> None:
    at_batch_4 = threading.Event()
    requested = threading.Event()

    class Pause(Callback):

        def batch_end(self, state, logger):
            if int(state.timestamp.batch) == 4:
                at_batch_4.set()
                requested.wait(60)  # the other thread requests the stop while batch 4's callbacks run

    trainer = make_trainer('deterministic', callbacks=[Probe()])
    trainer.state.callbacks.append(Pause())

    def controller():
        at_batch_4.wait(60)
        trainer.request_stop()
        requested.set()

    thread = threading.Thread(target=controller)
    thread.start()
    fit_and_record(trainer, 'stopped')
    thread.join()
    stopped_at = int(trainer.state.timestamp.batch)
    max_duration = str(trainer.state.max_duration)
    trainer.fit()  # the request was used up: the next fit() trains to the end
    report(
        stopped_at=stopped_at,
        max_duration=max_duration,
        finished_at=int(trainer.state.timestamp.batch),
        closed=os.path.exists('close.rank0'),
    )
    trainer.close()


def request_stop_without_save_folder() -> None:
    messages = LogCollector(logger='composer')
    trainer = make_trainer('deterministic', callbacks=[Probe()], save_folder=None, max_duration='2ba')
    trainer.request_stop()  # before fit(): the next fit() stops as soon as it can
    trainer.fit()
    report(
        batch=int(trainer.state.timestamp.batch),
        messages=[m for m in messages.messages if 'without a checkpoint' in m],
    )


def sigterm_outside_fit(after_fit: bool):
    trainer = make_trainer('deterministic', callbacks=[Probe()], save_on_preemption=True, max_duration='2ba')
    if after_fit:
        trainer.fit()
    mark('training', os.getpid())
    time.sleep(300)
    return trainer


def save_on_preemption_is_validated() -> None:
    from composer.callbacks import CheckpointSaver

    outcomes = {}
    for name, kwargs in {
        'no save_folder': dict(save_folder=None, save_on_preemption=True),
        'a CheckpointSaver callback': dict(save_folder=None, save_on_preemption=True),
        'not a bool': dict(save_on_preemption='yes'),
        'an int': dict(save_on_preemption=1),
    }.items():
        try:
            callback = CheckpointSaver(folder='saver') if name == 'a CheckpointSaver callback' else Probe()
            trainer = make_trainer('deterministic', callbacks=[callback], **kwargs)
            trainer.close()
            outcomes[name] = 'ok'
        except (TypeError, ValueError) as e:
            outcomes[name] = f'{type(e).__name__}: {e}'
    report(**outcomes)


def count_collectives_with_and_without_stop_votes() -> None:
    from composer.utils import dist as composer_dist

    counts = {}
    for name in ('all_reduce', 'broadcast', 'all_gather', 'all_gather_object', 'broadcast_object_list', 'barrier'):
        original = getattr(composer_dist, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        setattr(composer_dist, name, counted)

    per_mode = {}
    for mode in (False, True):
        trainer = make_trainer(
            'deterministic',
            callbacks=[Probe()],
            save_folder=f'checkpoints_{mode}',
            save_on_preemption=mode,
            max_duration='6ba',
        )
        counts.clear()
        trainer.fit()
        per_mode[str(mode)] = dict(counts)
        trainer.close()
    report(**per_mode)


def dataloader_workers_during_a_job_wide_sigterm() -> None:
    """Fit with 2 DataLoader workers; the test SIGTERMs the whole job at batch 3."""
    trainer = make_trainer(
        'deterministic',
        callbacks=[Probe(announce_at=3, pause=3)],
        save_on_preemption=True,
        num_workers=2,
    )
    try:
        trainer.fit()
    except SystemExit as e:
        mark('exit', e.code)
        raise


def fit_without_save_folder() -> None:
    trainer = make_trainer('deterministic', callbacks=[Probe()], save_folder=None, max_duration='2ba')
    trainer.fit()
    trainer.close()
    report(warnings=warnings_seen(), batch=int(trainer.state.timestamp.batch))


if __name__ == '__main__':
    main(__name__, stderr_logs=True)
