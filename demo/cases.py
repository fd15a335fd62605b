"""The cases of the demo (``demo/demo.py``), each run in a fresh interpreter: signal dispositions are process-wide.

Run one as ``python demo/cases.py <case> '<JSON object of keyword arguments>'``, the convention of the tests'
scenarios (``scenario_support.main``). A case prints what happened on lines indented by four spaces (the demo shows
those) and fails with an ``AssertionError`` if Composer does not behave as the fork promises.

Nothing here imports Composer or torch at import time: several cases check what importing Composer does.
"""

import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

# The trainer factory shared with the tests (fork-only code: it may reach into tests/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'signal_handling' / 'scenarios'))
from scenario_support import handlers, main, make_trainer, same  # noqa: E402  # isort: skip


def show_logs() -> None:
    """Print warnings, and the signal handling's information, indented as the demo shows them."""
    logging.basicConfig(format='    [log] %(levelname)s %(name)s: %(message)s', level=logging.WARNING)
    logging.getLogger('composer.utils.signal_handling').setLevel(logging.INFO)


def import_in_worker_thread() -> None:
    """``import composer`` on a worker thread: no exception, the SIGTERM/SIGINT handlers unchanged."""
    before = handlers()
    errors = []

    def worker():
        try:
            import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
        except BaseException as e:
            errors.append(repr(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    print('    exceptions:', errors or 'none', '| SIGTERM/SIGINT handlers unchanged:', same(handlers(), before))
    assert not errors and same(handlers(), before)


def trainer_in_worker_thread() -> None:
    """A Trainer created and fit on a worker thread trains, warns once and leaves the handlers alone."""
    before = handlers()
    result = {}

    def worker():
        trainer = make_trainer()
        trainer.fit()
        result['batches'] = int(trainer.state.timestamp.batch)
        trainer.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    print(
        '    trained',
        result.get('batches'),
        'batches; handlers unchanged:',
        same(handlers(), before),
        '(one warning above says why and what to do)',
    )
    assert result.get('batches') == 8 and same(handlers(), before)


_original_signal = signal.signal


def refusing(signum: int, handler: Any) -> Any:
    """A stand-in of Ray 2.9's ``DeferSigint``: ``signal.signal`` for SIGINT raises.

    At module level: Composer's log record names it by module and qualified name (``__main__.refusing``).
    """
    if signum == signal.SIGINT:
        raise ValueError("Can't set signal handler for SIGINT while SIGINT is being deferred")
    return _original_signal(signum, handler)


def ray_defer_sigint() -> None:
    """Import Composer, create and fit a Trainer while setting a SIGINT handler raises: the handlers unchanged."""
    before = handlers()
    signal.signal = refusing
    try:
        import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
        trainer = make_trainer()
        trainer.fit()
        trainer.close()
    finally:
        signal.signal = _original_signal
    print('    import + Trainer + fit inside the context: OK; handlers unchanged:', same(handlers(), before))
    assert same(handlers(), before)


def opt_out() -> None:
    """``Trainer(enable_signal_handling=False)`` never calls ``signal.signal``."""
    calls: list[int] = []
    original_signal = signal.signal

    def recording_signal(signum: int, handler: Any) -> Any:
        calls.append(signum)
        return original_signal(signum, handler)

    signal.signal = recording_signal
    trainer = make_trainer(enable_signal_handling=False)
    trainer.fit()
    trainer.close()
    print('    signal.signal calls by Composer:', len(calls))
    assert calls == []


def request_stop_from_main_thread() -> None:
    """``Trainer.request_stop()`` on the main thread stops the fit on a worker thread, with one checkpoint."""
    from composer import Callback

    started = threading.Event()

    class Announce(Callback):

        def batch_end(self, state, logger):
            started.set()
            time.sleep(0.05)

    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(save_folder=folder, max_duration='100000ba', callbacks=[Announce()])
        t = threading.Thread(target=trainer.fit)
        t.start()
        started.wait(60)
        trainer.request_stop()  # e.g. from your own SIGTERM handler, or the framework that owns the signals
        t.join(60)
        checkpoints = sorted(f for f in os.listdir(folder) if f.startswith('ep'))
        print('    the worker stopped after batch', int(trainer.state.timestamp.batch), 'and saved', checkpoints)
        assert not t.is_alive() and len(checkpoints) == 1
        trainer.close()


def handlers_live_with_trainer() -> None:
    """Composer's handlers are installed while the Trainer is open; ``close()`` restores the original ones."""
    before = handlers()
    trainer = make_trainer()
    during = handlers()
    trainer.fit()
    trainer.close()
    print('    while open:', during[0])
    print('    after close(), the original handlers are back:', same(handlers(), before))
    assert not same(during, before) and same(handlers(), before)


def long_fit(trainer_kwargs: Optional[dict[str, Any]] = None) -> None:
    """Fit for 100000 batches (slowly): print ``TRAINING`` at batch 2 (the demo sends SIGTERM then), and the closes.

    Args:
        trainer_kwargs: more keyword arguments of ``make_trainer``.
    """
    from composer import Callback

    class Announce(Callback):

        def batch_end(self, state, logger):
            if int(state.timestamp.batch) == 2:
                print('TRAINING', flush=True)
            time.sleep(0.05)

        def close(self, state, logger):
            print('    [child] callback close() ran', flush=True)

        def post_close(self):
            print('    [child] callback post_close() ran', flush=True)

    trainer = make_trainer(callbacks=[Announce()], max_duration='100000ba', **(trainer_kwargs or {}))
    trainer.fit()


def preemption_run(mode: str, folder: str) -> None:
    """One run of the ``save_on_preemption`` case: ``mode`` is ``uninterrupted``, ``preempted`` or ``resumed``.

    The weights it ends with go to ``<folder>/../<mode>.pt``.

    Args:
        mode: ``preempted`` prints ``TRAINING`` at batch 10 (the demo sends SIGTERM then) and saves on preemption;
            ``resumed`` autoresumes from ``folder``.
        folder: the checkpoint folder.
    """
    import torch

    from composer import Callback

    class Announce(Callback):

        def batch_end(self, state, logger):
            if mode == 'preempted' and int(state.timestamp.batch) == 10:
                print('TRAINING', flush=True)
            time.sleep(0.02)

    trainer = make_trainer(
        'deterministic',
        hidden=16,
        dropout=0.2,
        samples=256,
        batch_size=8,
        max_duration='2ep',
        seed=17,
        run_name='demo',
        save_folder=folder,
        save_interval='1ep',
        save_on_preemption=mode == 'preempted',
        autoresume=mode == 'resumed',
        callbacks=[Announce()],
    )
    trainer.fit()
    torch.save(trainer.state.model.state_dict(), f'{folder}/../{mode}.pt')
    print(f'    [{mode}] trained to batch {int(trainer.state.timestamp.batch)}', flush=True)


if __name__ == '__main__':
    show_logs()  # before main(): its log collector on the root logger would make logging.basicConfig do nothing
    main(__name__)
