# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Callbacks for the LLM Foundry runs, registered in LLM Foundry's callback registry.

LLM Foundry imports this file itself: the runs' YAML lists it in ``code_paths`` (``llmfoundry.command_utils.train``
calls ``import_file`` on each entry before it reads the rest of the config), and then names the callbacks under
``callbacks:`` as ``client_progress`` and ``client_hang_close``. It is loaded in the client venv only, as a file
(module name ``python_code``), never imported as part of the ``clients`` package.
"""

import os
import time
from typing import Optional

from llmfoundry.registry import callbacks

from composer.core import Callback, State
from composer.loggers import Logger


def _append(path: str, line: str) -> None:
    with open(path, 'a', encoding='utf-8') as f:
        f.write(line + '\n')
        f.flush()
        os.fsync(f.fileno())


def _write_atomically(path: str, text: str) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


class ClientProgress(Callback):
    """Records each finished batch; at batch ``signal_at`` tells the driver, which then signals this process.

    Args:
        progress (str): A file that gets a line ``<pid> batch <n>`` after each batch and ``<pid> fit_end <time>``.
        signal_at (int, optional): At the end of this batch, write ``marker`` and wait (at most ``wait`` seconds)
            until the driver has sent its signal and written ``<marker>.sent``. ``None``: never.
        marker (str, optional): The marker file (required with ``signal_at``).
        wait (float): The longest wait for the driver, in seconds.
    """

    def __init__(self, progress: str, signal_at: Optional[int] = None, marker: Optional[str] = None, wait: float = 60):
        if signal_at is not None and not marker:
            raise ValueError('client_progress: signal_at needs a marker file.')
        self.progress = progress
        self.signal_at = signal_at
        self.marker = marker
        self.wait = wait

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger
        batch = int(state.timestamp.batch)
        _append(self.progress, f'{os.getpid()} batch {batch}')
        if batch == self.signal_at and self.marker:
            _write_atomically(self.marker, f'{os.getpid()} {batch}\n')
            deadline = time.monotonic() + self.wait
            while not os.path.exists(f'{self.marker}.sent') and time.monotonic() < deadline:
                time.sleep(0.02)

    def fit_end(self, state: State, logger: Logger) -> None:
        del state, logger
        _append(self.progress, f'{os.getpid()} fit_end {time.time():.3f}')


class HangingCloseCallback(Callback):
    """A callback whose ``close()`` hangs (for ``seconds``), as a stuck upload or a dead file system would.

    Args:
        progress (str): A file that gets a line ``<pid> close_start <time>`` when ``close()`` begins.
        seconds (float): How long ``close()`` sleeps; a bound, so that the process ends even if nothing stops it.
    """

    def __init__(self, progress: str, seconds: float = 120):
        self.progress = progress
        self.seconds = seconds

    def close(self, state: State, logger: Logger) -> None:
        del state, logger
        _append(self.progress, f'{os.getpid()} close_start {time.time():.3f}')
        time.sleep(self.seconds)
        _append(self.progress, f'{os.getpid()} close_end {time.time():.3f}')


callbacks.register('client_progress', func=ClientProgress)
callbacks.register('client_hang_close', func=HangingCloseCallback)
