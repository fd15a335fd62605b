# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A training process for the launcher's clean-up tests: on SIGTERM it writes a checkpoint, slowly, then exits 143.

Run by the ``composer`` launcher as ``slow_to_save.py <folder> <seconds>``. Each rank writes ``ready.rank<N>`` once
its handler is installed and a first, complete checkpoint exists. On SIGTERM it writes ``checkpoint-final.rank<N>.pt``
under a temporary name, takes ``seconds`` to do so and renames it into place: the final checkpoint exists only if
the launcher let the rank run until the write was done.
"""

import os
import signal
import sys
import time

import torch


def _save(folder: str, name: str, step: int, seconds: float = 0.0) -> None:
    partial = os.path.join(folder, f'.partial-{name}')
    torch.save({'step': step, 'weights': torch.arange(1000) * step}, partial)
    time.sleep(seconds)  # a large checkpoint, or a slow disk
    os.replace(partial, os.path.join(folder, name))


def main(folder: str, seconds: float) -> None:
    rank = os.environ['RANK']
    _save(folder, f'checkpoint-previous.rank{rank}.pt', step=1)

    def save_and_exit(signum, frame):
        _save(folder, f'checkpoint-final.rank{rank}.pt', step=2, seconds=seconds)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, save_and_exit)
    with open(os.path.join(folder, f'ready.rank{rank}'), 'w') as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.1)


if __name__ == '__main__':
    main(sys.argv[1], float(sys.argv[2]))
