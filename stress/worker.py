"""One training of the signal storm (``stress/run.py`` starts it, alone or under the ``composer`` launcher).

Roles: ``train`` announces the chosen moment in ``events.jsonl`` and holds still there for ``--pause`` seconds, so
the harness's signal lands at that moment (a checkpoint write is held half-written); ``resume`` continues from
the checkpoint ``autoresume`` picks (or from scratch) to the end; ``reference`` trains uninterrupted. Every rank
appends what the harness checks to ``events.jsonl``: the moment, callback closes, how ``fit()`` ended, where a
resumed fit started. ``train`` and ``resume`` must end with the same weights as ``reference`` (CPU, bit for bit).
"""

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

from composer import Callback, Trainer

# The trainer factory shared with the tests (fork-only code: it may reach into tests/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'signal_handling' / 'scenarios'))
import scenario_support  # noqa: E402  # isort: skip

RANK = int(os.environ.get('RANK', '0'))
SAMPLES = 64
BATCH_SIZE = 4
EPOCHS = 2
SAVE_INTERVAL = 3  # batches
EVAL_INTERVAL = 5  # batches


def event(name: str, **values) -> None:
    """Append one JSON line (a single ``write`` on an ``O_APPEND`` descriptor: lines of ranks never interleave)."""
    line = json.dumps({'event': name, 'rank': RANK, 'pid': os.getpid(), 'time': time.time(), **values}) + '\n'
    fd = os.open('events.jsonl', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def holders(moment: str) -> int:
    """How many ranks hold at ``moment``: every rank, except for a checkpoint write (rank 0 writes it)."""
    return 1 if moment == 'checkpoint' else int(os.environ.get('WORLD_SIZE', '1'))


def _events() -> list[dict]:
    try:
        with open('events.jsonl') as f:
            return [json.loads(line) for line in f if line.endswith('\n')]
    except FileNotFoundError:
        return []


class Storm(Callback):
    """Holds still at the chosen moment and records closes, the end of fit and where fit started."""

    def __init__(self, moment: str, at: int, pause: float):
        self.moment = moment
        self.at = at  # the batch count at which the moment comes (see stress/run.py's moments)
        self.pause = pause
        self.fit_done = False

    def hold(self, state, name: str, **values) -> None:
        self.moment = f'{name}-done'  # hold once
        event('moment', moment=name, batch=int(state.timestamp.batch), **values)
        # Every rank that holds this moment holds at the same time, so that a signal to the whole group finds each
        # of them there (a rank still constructing its Trainer would die by the OS default).
        deadline = time.monotonic() + 60
        while len({e['rank'] for e in _events() if e['event'] == 'moment'}) < holders(name):
            if time.monotonic() > deadline:
                raise RuntimeError(f'the other ranks never reached the moment {name!r}')
            time.sleep(0.005)
        time.sleep(self.pause)

    def fit_start(self, state, logger):
        event('fit_start', batch=int(state.timestamp.batch))

    def after_backward(self, state, logger):
        if self.moment == 'batch' and int(state.timestamp.batch) == self.at:
            self.hold(state, 'batch')

    def eval_batch_start(self, state, logger):
        if self.moment == 'eval' and int(state.timestamp.batch) == self.at:
            self.hold(state, 'eval')

    def fit_end(self, state, logger):
        event('fit_end', batch=int(state.timestamp.batch))

    def close(self, state, logger):
        event('close')
        if self.moment == 'close' and self.fit_done:
            self.hold(state, 'close')

    def post_close(self):
        event('post_close')


def install_half_written_checkpoint(callback: Storm, trainer: Trainer) -> None:
    """Hold the checkpoint of batch ``callback.at`` half-written on disk for the pause (rank 0 writes it)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        holding = callback.moment == 'checkpoint' and int(trainer.state.timestamp.batch) == callback.at
        if holding and hasattr(f, 'write'):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            callback.hold(trainer.state, 'checkpoint', file=getattr(f, 'name', ''))
            f.write(data[len(data) // 2:])
            return None
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def make_trainer(args: argparse.Namespace, callback: Storm) -> Trainer:
    """The tests' ``deterministic`` run, with 2 DataLoader workers, evaluation and periodic checkpoints."""
    kwargs = {}
    if args.role != 'reference':
        kwargs.update(save_folder='checkpoints', save_interval=f'{SAVE_INTERVAL}ba', autoresume=True)
    else:
        kwargs.update(save_folder=None)
    return scenario_support.make_trainer(
        'deterministic',
        samples=SAMPLES,
        batch_size=BATCH_SIZE,
        num_workers=2,
        eval_samples=16,
        run_name='storm',
        eval_interval=f'{EVAL_INTERVAL}ba',
        max_duration=f'{EPOCHS}ep',
        seed=42,
        callbacks=[callback],
        save_on_preemption=args.mode == 'preempt' and args.role == 'train',
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--role', choices=['train', 'resume', 'reference'], required=True)
    parser.add_argument('--mode', choices=['default', 'preempt'], default='default')
    parser.add_argument('--moment', default='none')
    parser.add_argument('--at', type=int, default=-1)
    parser.add_argument('--pause', type=float, default=0.0)
    args = parser.parse_args()

    callback = Storm(args.moment if args.role == 'train' else 'none', args.at, args.pause)
    trainer = make_trainer(args, callback)
    install_half_written_checkpoint(callback, trainer)
    if callback.moment == 'before_fit':
        callback.hold(trainer.state, 'before_fit')
    try:
        if args.role == 'resume' and int(trainer.state.timestamp.epoch) >= EPOCHS:
            event('fit_start', batch=int(trainer.state.timestamp.batch))  # autoresume loaded the final checkpoint
        else:
            trainer.fit()
    except SystemExit as e:
        event('exit', how='SystemExit', code=e.code)
        raise
    except KeyboardInterrupt:
        event('exit', how='KeyboardInterrupt')
        raise
    event('exit', how='returned', batch=int(trainer.state.timestamp.batch))
    callback.fit_done = True
    if RANK == 0:
        torch.save(trainer.state.model.state_dict(), f'weights-{args.role}.pt')
    trainer.close()
    event('closed')


if __name__ == '__main__':
    main()
