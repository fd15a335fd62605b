"""One benchmark measurement in a fresh interpreter; ``bench/run.py`` starts it with ``PYTHONPATH`` choosing the
``composer`` package (upstream's or the fork's). Prints one JSON line."""

import json
import os
import resource
import sys
import time
from pathlib import Path

# The trainer factory shared with the tests; it imports neither torch nor Composer before it is called.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'signal_handling' / 'scenarios'))
import scenario_support  # noqa: E402  # isort: skip


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trainer(batches: int, callbacks=(), **kwargs):
    """The tests' trainer factory (``scenario_support.make_trainer``): a linear model, 64 samples in batches of 8."""
    return scenario_support.make_trainer(
        features=16,
        samples=64,
        batch_size=8,
        max_duration=f'{batches}ba',
        callbacks=list(callbacks),
        **kwargs,
    )


def _checkpoint_kwargs(mode: str, folder: str, save_interval: str = '100000ba') -> dict:
    """``plain``: no checkpointing; ``save``: a save_folder; ``preempt``: a save_folder and save_on_preemption."""
    if mode == 'plain':
        return {}
    kwargs = {'save_folder': folder, 'save_interval': save_interval, 'save_overwrite': True}
    if mode == 'preempt':
        kwargs['save_on_preemption'] = True
    return kwargs


def measure_import() -> dict:
    start = time.perf_counter()
    import composer
    elapsed = time.perf_counter() - start
    return {'seconds': elapsed, 'version': composer.__version__, 'rss_mib': _peak_rss_mib()}


def measure_construct(samples: int) -> dict:
    _trainer(1).close()  # warm-up: first construction pays one-off costs
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        trainer = _trainer(1)
        trainer.close()
        times.append(time.perf_counter() - start)
    return {'seconds': times}


def measure_fit(batches: int, mode: str = 'plain') -> dict:
    import tempfile

    import composer
    rss_import = _peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix='bench-checkpoints-') as folder:  # one per process: one per rank
        trainer = _trainer(batches, **_checkpoint_kwargs(mode, folder))
        start = time.perf_counter()
        trainer.fit()
        elapsed = time.perf_counter() - start
        trainer.close()
    return {
        'batches_per_second': batches / elapsed,
        'rss_after_import_mib': rss_import,
        'rss_after_fit_mib': _peak_rss_mib(),
        'version': composer.__version__,
    }


def measure_acquire_release(samples: int) -> dict:
    from composer.utils.signal_handling import acquire_signal_handlers

    def per_call_us(calls: int = 2000) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            acquire_signal_handlers(True).release()
        return (time.perf_counter() - start) / calls * 1e6

    per_call_us()  # warm-up
    install_restore = [per_call_us() for _ in range(samples)]
    holder = acquire_signal_handlers(True)  # the shared case: another engine already holds the handlers
    shared = [per_call_us() for _ in range(samples)]
    holder.release()
    return {'install_restore_us': install_restore, 'shared_us': shared}


def sigterm_child() -> None:
    """Train until killed; announce once training runs. A callback closes (like a logger flushing) on exit."""
    from composer import Callback

    class Closing(Callback):

        def batch_end(self, state, logger):
            if int(state.timestamp.batch) == 3:
                print('TRAINING', flush=True)
            time.sleep(0.01)

        def close(self, state, logger):
            time.sleep(0.05)  # a flush

    _trainer(10**7, callbacks=[Closing()]).fit()


def preempted_child(signal_at: int, mode: str, save_interval: int, folder: str) -> None:
    """Train with checkpoints in ``folder``; SIGTERM this process inside batch ``signal_at + 1``.

    ``mode`` is ``save`` (upstream's behaviour: periodic checkpoints every ``save_interval`` batches) or ``preempt``
    (the fork's ``save_on_preemption=True``, no periodic checkpoint before the end). Records in ``folder/signal.json``
    how many batches were complete when the signal was sent, and when (``time.time()``).
    """
    import signal

    from composer import Callback

    class Preempt(Callback):

        def after_backward(self, state, logger):
            if int(state.timestamp.batch) == signal_at:
                with open(os.path.join(folder, '..', 'signal.json'), 'w') as f:
                    json.dump({'completed_batches': signal_at, 'time': time.time()}, f)
                os.kill(os.getpid(), signal.SIGTERM)

    interval = f'{save_interval}ba' if mode == 'save' else '100000ba'
    _trainer(10**6, callbacks=[Preempt()], **_checkpoint_kwargs(mode, folder, interval)).fit()


def main() -> None:
    mode = sys.argv[1]
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if mode == 'sigterm-child':
        sigterm_child()
        return
    if mode == 'preempted-child':
        preempted_child(arg, sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    result = {
        'import': measure_import,
        'construct': lambda: measure_construct(arg),
        'fit': lambda: measure_fit(arg, sys.argv[3] if len(sys.argv) > 3 else 'plain'),
        'acquire': lambda: measure_acquire_release(arg),
    }[mode]()
    result['pid'] = os.getpid()
    if os.environ.get('RANK', '0') == '0':
        print('BENCH ' + json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
