# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""What the scenario modules share: the one trainer factory, the one log collector, markers and the entry point.

A scenario is a function of a module in this folder, run in a fresh interpreter by path (signal dispositions are
process-wide): ``python <module>.py <function> '<JSON object of keyword arguments>'`` (see :func:`main`). The test
reads what the scenario printed with :func:`report`, the marker files it wrote with :func:`mark`, its exit status
and its output. ``stress/``, ``bench/`` and ``demo/`` import this module by path for :func:`make_trainer`.

Nothing here imports Composer or torch at import time: a scenario decides when Composer is imported (some test that
importing it has no side effects), and ``bench/`` times that import.
"""

import json
import logging
import os
import signal
import sys
import threading
from types import TracebackType
from typing import Any, Callable, Optional

RANK = os.environ.get('RANK', '0')

#: The two model-and-data recipes of :func:`make_trainer`; any of their values can be overridden by a keyword.
#: ``small``: a linear model, 32 samples in batches of 4 (8 batches per epoch), SGD, one epoch.
#: ``deterministic``: dropout, Adam and a shuffling sampler (resuming must restore RNG, optimizer and sampler state),
#: 64 samples in batches of 4 (16 batches per epoch in one process, 8 per rank with two ranks), two epochs, a fixed
#: seed, and checkpoints in ``./checkpoints`` only at the end (far-away interval) unless something stops the run.
RECIPES: dict[str, dict[str, Any]] = {
    'small': {
        'features': 4,
        'hidden': None,
        'dropout': 0.0,
        'samples': 32,
        'batch_size': 4,
        'optimizer': 'sgd',
        'lr': 0.01,
        'shuffle': False,
        'trainer': {
            'max_duration': '1ep',
        },
    },
    'deterministic': {
        'features': 4,
        'hidden': 8,
        'dropout': 0.5,
        'samples': 64,
        'batch_size': 4,
        'optimizer': 'adam',
        'lr': 0.01,
        'shuffle': True,
        'trainer': {
            'max_duration': '2ep',
            'seed': 42,
            'save_folder': 'checkpoints',
            'save_interval': '1000ep',
        },
    },
}

_MODEL_AND_DATA = ('features', 'hidden', 'dropout', 'samples', 'batch_size', 'optimizer', 'lr', 'shuffle')


def make_trainer(recipe: str = 'small', *, num_workers: int = 0, eval_samples: int = 0, **kwargs: Any):
    """A CPU :class:`~composer.Trainer` of ``recipe`` (see :data:`RECIPES`), the same one in every process.

    Args:
        recipe: ``small`` or ``deterministic``.
        num_workers: DataLoader worker processes of the training data.
        eval_samples: with more than 0, an evaluation DataLoader of that many samples.
        **kwargs: overrides of the recipe's model and data (``features``, ``hidden``, ``dropout``, ``samples``,
            ``batch_size``, ``optimizer``, ``lr``, ``shuffle``); everything else goes to the ``Trainer``.

    Returns:
        The trainer. Under a launcher (``WORLD_SIZE`` > 1) the data is split between the ranks.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from composer import Trainer
    from composer.models import ComposerClassifier
    from composer.utils import dist

    settings = dict(RECIPES[recipe], trainer=dict(RECIPES[recipe]['trainer']))
    for name in _MODEL_AND_DATA:
        if name in kwargs:
            settings[name] = kwargs.pop(name)
    trainer_kwargs = {**settings['trainer'], **kwargs}

    torch.manual_seed(0)
    features, hidden = settings['features'], settings['hidden']
    if hidden is None:
        net = torch.nn.Linear(features, 2)
    else:
        net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.Dropout(settings['dropout']),
            torch.nn.Linear(hidden, 2),
        )
    model = ComposerClassifier(net, num_classes=2)
    generator = torch.Generator().manual_seed(1)

    def dataset(samples: int) -> TensorDataset:
        return TensorDataset(
            torch.randn(samples, features, generator=generator),
            torch.randint(0, 2, (samples,), generator=generator),
        )

    def sampler(data: TensorDataset, shuffle: bool):
        return dist.get_sampler(data, shuffle=shuffle) if shuffle or dist.get_world_size() > 1 else None

    train = dataset(settings['samples'])
    trainer_kwargs['train_dataloader'] = DataLoader(
        train,
        batch_size=settings['batch_size'],
        sampler=sampler(train, settings['shuffle']),
        num_workers=num_workers,
    )
    if eval_samples:
        evaluation = dataset(eval_samples)
        trainer_kwargs['eval_dataloader'] = DataLoader(
            evaluation,
            batch_size=settings['batch_size'],
            sampler=sampler(evaluation, False),
        )
    optimizer = torch.optim.Adam if settings['optimizer'] == 'adam' else torch.optim.SGD
    return Trainer(
        model=model,
        optimizers=optimizer(model.parameters(), lr=settings['lr']),
        device='cpu',
        progress_bar=False,
        **trainer_kwargs,
    )


class LogCollector(logging.Handler):
    """Collects the log records that ``match`` accepts (all by default) at ``level`` or above, under ``logger``.

    Args:
        match: which records to keep.
        level: the lowest level kept.
        logger: the name of the logger the collector attaches to (the root logger by default).
    """

    def __init__(
        self,
        match: Optional[Callable[[logging.LogRecord], bool]] = None,
        level: int = logging.NOTSET,
        logger: str = '',
    ):
        super().__init__(level)
        self.match = match
        self.records: list[logging.LogRecord] = []
        logging.getLogger(logger).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.match is None or self.match(record):
            self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


def _about_sigterm(record: logging.LogRecord) -> bool:
    return 'SIGTERM' in record.getMessage()


#: Composer's warnings about its signal handlers, collected from the start of every scenario (see :func:`main`).
signal_warnings: Optional[LogCollector] = None


def warnings_seen() -> list[str]:
    """The warnings about SIGTERM logged in this scenario so far."""
    assert signal_warnings is not None, 'only in a scenario started by main()'
    return signal_warnings.messages


def handlers() -> tuple[Any, Any]:
    """The current SIGTERM and SIGINT handlers."""
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two :func:`handlers` results are the very same handlers."""
    return all(x is y for x, y in zip(a, b))


def report(**values: Any) -> None:
    """Print ``values`` for the test (it merges every ``RESULT`` line)."""
    print('RESULT ' + json.dumps(values), flush=True)


def run_in_thread(target: Callable[[], Any]) -> list[str]:
    """Run ``target`` on a new thread; return the exceptions it raised, as reprs."""
    errors = []

    def wrapper():
        try:
            target()
        except BaseException as e:
            errors.append(repr(e))

    thread = threading.Thread(target=wrapper)
    thread.start()
    thread.join(120)
    return errors


def mark(name: str, value: Any = '', directory: str = '.') -> None:
    """Append ``value`` as a line to the marker file ``<name>.rank<RANK>`` (the test reads them back)."""
    with open(os.path.join(directory, f'{name}.rank{RANK}'), 'a') as f:
        f.write(f'{value}\n')


def block_in_c() -> None:
    """Wait forever in C, where no Python signal handler runs (as in a hung collective or driver call).

    ``pthread_cond_wait`` does not return on a signal, and ctypes releases the GIL meanwhile.
    """
    import ctypes
    libc = ctypes.CDLL(None)
    mutex, condition = ctypes.create_string_buffer(64), ctypes.create_string_buffer(64)  # static initializers: zeros
    libc.pthread_mutex_lock(mutex)
    libc.pthread_cond_wait(condition, mutex)


def read_stdin_in_a_native_exit_handler() -> None:
    """At the very end of the process, after Python's finalization, wait in C until stdin is closed.

    The C library runs the exit handlers registered with ``__cxa_atexit`` when ``exit()`` is called, after the
    interpreter has finalized (as native libraries' teardown runs then); this one is ``getchar()``. A test sees the
    process in that window when its main thread reads from fd 0 (``/proc/<pid>/syscall``), signals it there and then
    closes its stdin to let it exit.
    """
    import ctypes
    libc = ctypes.CDLL(None)
    if libc.__cxa_atexit(ctypes.cast(libc.getchar, ctypes.c_void_p), None, None) != 0:
        raise RuntimeError('__cxa_atexit failed')


#: What the scenario returned, and the traceback of what it raised: both live until the interpreter exits, as a
#: script's globals would (a trainer left open closes in the exit hooks, not when the scenario's function ends).
_kept: list[Any] = []


def log_to_stderr() -> None:
    """Print the log records (Composer's warnings) on stderr, for the test to read."""
    logging.getLogger().addHandler(logging.StreamHandler())


def main(module: str, stderr_logs: bool = False) -> None:
    """Run the scenario named by ``sys.argv[1]`` of ``module`` with the keyword arguments in ``sys.argv[2]`` (JSON).

    Args:
        module: the ``__name__`` of the scenario module.
        stderr_logs: whether the log records go to stderr (see :func:`log_to_stderr`).
    """
    global signal_warnings
    signal_warnings = LogCollector(_about_sigterm, level=logging.WARNING)
    if stderr_logs:
        log_to_stderr()
    scenario = getattr(sys.modules[module], sys.argv[1])
    kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        _kept.append(scenario(**kwargs))
    except BaseException as e:
        traceback: Optional[TracebackType] = e.__traceback__
        _kept.append(traceback)
        raise
