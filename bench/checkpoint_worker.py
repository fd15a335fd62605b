# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""One training run with a large checkpoint for ``bench/checkpoint_size.py``, in a fresh interpreter.

``bench/checkpoint_size.py`` starts it with ``PYTHONPATH`` choosing the ``composer`` package (upstream's or the
fork's): ``python checkpoint_worker.py '<JSON object>'`` with the keys ``mode`` (``preempt`` or ``periodic``),
``save_folder`` (a local path or ``s3://bucket/prefix``), ``features``, ``hidden``, ``at_batch`` and
``max_batches``. The model is :func:`scenario_support.make_trainer`'s ``small`` recipe with a hidden layer and Adam,
sized by ``features`` x ``hidden`` (parameters plus Adam's two moments make the checkpoint).

Both modes print ``EVENT <JSON>`` lines with ``time.time()`` stamps for the parent to read:

* ``preempt`` (the fork's ``save_on_preemption=True``, no periodic checkpoint): at the end of batch ``at_batch``
  (during ``BATCH_END``) the worker prints ``at`` and waits for one line on stdin; the parent sends ``SIGTERM``
  first, then the line. The stop therefore lands after that batch: the checkpoint is of batch ``at_batch`` and no
  batch in flight adds to the time. The worker exits 143.
* ``periodic`` (both packages, no signal): a ``save_interval`` callable saves at the end of batch ``at_batch`` only;
  ``save`` gives the times around that ``BATCH_CHECKPOINT`` (``BATCH_END`` of that batch to the next
  ``BATCH_START``), i.e. how long the save blocks training. Training ends one batch later (``fit_end`` waits for
  remote uploads) and the worker exits 0.
"""

import atexit
import json
import logging
import select
import sys
import time
from pathlib import Path

# The trainer factory shared with the tests; it imports neither torch nor Composer before it is called.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'signal_handling' / 'scenarios'))
import scenario_support  # noqa: E402  # isort: skip


def event(name: str, **values) -> None:
    """Print one event for the parent."""
    print('EVENT ' + json.dumps({'event': name, **values}), flush=True)


class _StopLogged(logging.Handler):
    """Reports when the trainer logs that the preemption stop began (``Preempted (SIGTERM): ...``)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith('Preempted (SIGTERM)'):
            event('stop_logged', time=record.created)


def main() -> None:
    config = json.loads(sys.argv[1])
    # registered before Composer and torch import: runs after their exit handlers (atexit runs in reverse order)
    atexit.register(lambda: event('atexit_last', time=time.time()))
    mode, at_batch = config['mode'], int(config['at_batch'])

    import composer
    from composer import Callback
    from composer.core import Event

    class Timeline(Callback):
        """Batch times; the gate at ``at_batch`` (``preempt``); the time around the periodic save (``periodic``)."""

        def __init__(self) -> None:
            self.save_started = 0.0

        def batch_start(self, state, logger) -> None:
            del logger
            if self.save_started:
                event('save', batch=at_batch, start=self.save_started, end=time.time())
                self.save_started = 0.0
            self.started = time.time()

        def batch_end(self, state, logger) -> None:
            del logger
            batch = int(state.timestamp.batch)
            now = time.time()
            event('batch', batch=batch, seconds=now - self.started)
            if batch != at_batch:
                return
            if mode == 'periodic':
                self.save_started = now  # the saver runs next, on BATCH_CHECKPOINT
                return
            event('at', batch=batch, time=now)
            ready, _, _ = select.select([sys.stdin], [], [], 300)
            if not ready:
                raise TimeoutError('no go from the parent within 300 s')
            sys.stdin.readline()

        def fit_end(self, state, logger) -> None:
            del state, logger
            event('fit_end', time=time.time())

        def close(self, state, logger) -> None:
            del state, logger
            event('close', time=time.time())

        def post_close(self) -> None:
            event('post_close', time=time.time())

    def save_at(state, event_: Event) -> bool:
        return mode == 'periodic' and event_ == Event.BATCH_CHECKPOINT and int(state.timestamp.batch) == at_batch

    logging.getLogger().addHandler(_StopLogged(logging.WARNING))
    kwargs = {'save_on_preemption': True} if mode == 'preempt' else {}
    started = time.time()
    trainer = scenario_support.make_trainer(
        'small',
        features=int(config['features']),
        hidden=int(config['hidden']),
        optimizer='adam',
        samples=64,
        batch_size=4,
        max_duration=f'{int(config["max_batches"])}ba',
        run_name='bench',
        save_folder=config['save_folder'],
        save_interval=save_at,
        save_overwrite=True,
        callbacks=[Timeline()],
        **kwargs,
    )
    params = sum(p.numel() for p in trainer.state.model.parameters())
    event('ready', version=composer.__version__, params=params, construct_seconds=time.time() - started)
    atexit.register(lambda: event('atexit_first', time=time.time()))
    trainer.fit()
    trainer.close()
    event('done', time=time.time())


if __name__ == '__main__':
    main()
