"""One training of the signal storm (``stress/run.py`` starts it, alone or under the ``composer`` launcher).

Roles: ``train`` announces the chosen moment in ``events.jsonl`` and holds still there for ``--pause`` seconds, so
the harness's signal lands at that moment (a checkpoint write is held half-written); ``resume`` continues from
the checkpoint ``autoresume`` picks (or from scratch) to the end; ``reference`` trains uninterrupted. Every rank
appends what the harness checks to ``events.jsonl``: the moment, callback closes, how ``fit()`` ended, where a
resumed fit started. ``train`` and ``resume`` must end with the same weights as ``reference`` (CPU, bit for bit).

``--sharded``: FSDP2 (the harness sets ``FSDP_VERSION=2``) with sharded checkpoints, each a folder of one
``__{rank}_0.distcp`` per rank and ``.metadata``; the moments of a sharded save are ``shard_write`` (every rank's
shard file held half-written, no ``.metadata``), ``shard_metadata`` (the shards complete, rank 0's ``.metadata.tmp``
written but not yet renamed to ``.metadata``) and ``shard_link`` (the folder complete, ``latest-rank0.pt`` not yet
pointing to it). Each rank saves its own shards of the final weights.
"""

import argparse
import glob
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


#: The moments that only rank 0 reaches: its monolithic checkpoint write, the sharded ``.metadata`` and the symlink.
RANK_0_MOMENTS = ('checkpoint', 'shard_metadata', 'shard_link')


def holders(moment: str) -> int:
    """How many ranks hold at ``moment``: every rank, except where only rank 0 writes (:data:`RANK_0_MOMENTS`)."""
    return 1 if moment in RANK_0_MOMENTS else int(os.environ.get('WORLD_SIZE', '1'))


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


def install_sharded_save_moments(callback: Storm, trainer: Trainer) -> None:
    """Hold the sharded save of batch ``callback.at`` at ``callback.moment`` (see the module's docstring)."""
    from torch.distributed.checkpoint import filesystem

    def holding(moment: str) -> bool:
        return callback.moment == moment and int(trainer.state.timestamp.batch) == callback.at

    real_write_data = filesystem.FileSystemWriter.write_data

    def write_data(self, plan, planner):
        written = real_write_data(self, plan, planner)
        if holding('shard_write'):
            written.wait()
            shards = sorted(glob.glob(os.path.join(self.path, f'__{RANK}_*.distcp')))
            contents = {path: Path(path).read_bytes() for path in shards}
            for path, data in contents.items():
                with open(path, 'r+b') as f:
                    f.truncate(len(data) // 2)
            callback.hold(trainer.state, 'shard_write', files=[os.path.basename(path) for path in shards])
            for path, data in contents.items():
                Path(path).write_bytes(data)
        return written

    real_rename = filesystem.FileSystem.rename

    def rename(self, path, new_path):
        if os.path.basename(new_path) == '.metadata' and holding('shard_metadata'):
            callback.hold(trainer.state, 'shard_metadata', file=str(path))
        return real_rename(self, path, new_path)

    real_symlink = os.symlink

    def symlink(src, dst, *args, **kwargs):
        if 'latest' in os.path.basename(dst) and holding('shard_link'):
            callback.hold(trainer.state, 'shard_link', target=str(src))
        return real_symlink(src, dst, *args, **kwargs)

    filesystem.FileSystemWriter.write_data = write_data
    filesystem.FileSystem.rename = rename
    os.symlink = symlink


def local_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """This rank's model weights: its shards of them when sharded."""
    from torch.distributed.tensor import DTensor
    return {
        name: value.to_local() if isinstance(value, DTensor) else value
        for name, value in trainer.state.model.state_dict().items()
    }


def make_trainer(args: argparse.Namespace, callback: Storm) -> Trainer:
    """The tests' ``deterministic`` run, with 2 DataLoader workers, evaluation and periodic checkpoints."""
    kwargs = {}
    if args.sharded:
        kwargs['parallelism_config'] = {'fsdp': {'state_dict_type': 'sharded'}}
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
    parser.add_argument('--sharded', action='store_true', help='FSDP2 with sharded checkpoints (FSDP_VERSION=2)')
    args = parser.parse_args()

    callback = Storm(args.moment if args.role == 'train' else 'none', args.at, args.pause)
    trainer = make_trainer(args, callback)
    install_half_written_checkpoint(callback, trainer)
    if args.sharded:
        install_sharded_save_moments(callback, trainer)
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
    if args.sharded:
        torch.save(local_weights(trainer), f'weights-{args.role}.rank{RANK}.pt')
    elif RANK == 0:
        torch.save(trainer.state.model.state_dict(), f'weights-{args.role}.pt')
    trainer.close()
    event('closed')


if __name__ == '__main__':
    main()
