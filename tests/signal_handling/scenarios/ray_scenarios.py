# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Frameworks that own signals: a stand-in for Ray 2.9's raising ``DeferSigint``, and real Ray.

Ray imports this module in its workers (it adds the driver's script directory to their path), so that the remote
functions find :func:`make_trainer`.
"""

import contextlib
import json
import signal
import threading
import time
from typing import Any

from scenario_support import handlers, main, make_trainer, report, warnings_seen


@contextlib.contextmanager
def defer_sigint_29():
    """Ray 2.9's ``DeferSigint``: while active, setting a SIGINT handler on the main thread raises."""
    original_signal = signal.signal

    def refusing_signal(signum, handler):
        if threading.current_thread() is threading.main_thread() and signum == signal.SIGINT:
            raise ValueError(
                "Can't set signal handler for SIGINT while SIGINT is being deferred within a "
                'DeferSigint context.',
            )
        return original_signal(signum, handler)

    signal.signal = refusing_signal
    try:
        yield
    finally:
        signal.signal = original_signal


def import_and_trainer_inside_defer_sigint() -> None:
    before = handlers()
    with defer_sigint_29():
        import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
        trainer = make_trainer()
        untouched_inside = all(a is b for a, b in zip(handlers(), before))
        trainer.fit()
        trainer.close()
    report(
        untouched_inside=untouched_inside,
        restored=all(a is b for a, b in zip(handlers(), before)),
        warnings=warnings_seen(),
    )


def explicit_true_inside_defer_sigint() -> None:
    before = handlers()
    with defer_sigint_29():
        trainer = make_trainer(enable_signal_handling=True)
        # SIGTERM was installed first, then SIGINT failed: SIGTERM must have been rolled back.
        untouched_inside = all(a is b for a, b in zip(handlers(), before))
        trainer.fit()
        trainer.close()
        second = make_trainer(enable_signal_handling=True)
        second.close()
    report(
        untouched_inside=untouched_inside,
        restored=all(a is b for a, b in zip(handlers(), before)),
        warnings=warnings_seen(),
    )


def _init_ray():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def train_in_ray_task() -> None:
    ray = _init_ray()

    @ray.remote
    def train_in_task():
        before = handlers()
        trainer = make_trainer()
        during = handlers()
        trainer.fit()
        trainer.close()
        after = handlers()
        return {
            'sigint_untouched_during': during[1] is before[1],
            'sigint_restored': after[1] is before[1],
            'sigterm_restored': after[0] is before[0],
            'batches': int(trainer.state.timestamp.batch),
        }

    try:
        report(**ray.get(train_in_task.remote(), timeout=300))
    finally:
        ray.shutdown()


def cancel_ray_task_holding_a_trainer(trainer_kwargs: dict[str, Any]) -> None:
    ray = _init_ray()
    from ray.exceptions import TaskCancelledError

    @ray.remote
    class Flag:

        def __init__(self):
            self.value = False

        def set(self):
            self.value = True

        def get(self):
            return self.value

    @ray.remote
    def train_forever(flag):
        from composer import Callback

        class Slow(Callback):

            def batch_end(self, state, logger):
                if int(state.timestamp.batch) == 1:
                    ray.get(flag.set.remote())
                time.sleep(0.05)

        trainer = make_trainer(callbacks=[Slow()], max_duration='100000ba', **trainer_kwargs)
        trainer.fit()
        return 'finished'

    try:
        flag = Flag.remote()
        ref = train_forever.remote(flag)
        deadline = time.monotonic() + 240
        while not ray.get(flag.get.remote()) and time.monotonic() < deadline:
            time.sleep(0.2)
        ray.cancel(ref)
        try:
            outcome = ray.get(ref, timeout=120)
        except TaskCancelledError:
            outcome = 'TaskCancelledError'
        except Exception as e:
            outcome = type(e).__name__ + ': ' + str(e)[:500]
        report(outcome=outcome)
    finally:
        ray.shutdown()


def ray_train_torch_trainer(outcome_path: str, storage_path: str) -> None:
    ray = _init_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_loop_per_worker(config):
        trainer = make_trainer()
        trainer.fit()
        outcome = {
            'batches': int(trainer.state.timestamp.batch),
            'main_thread': threading.current_thread() is threading.main_thread(),
        }
        trainer.close()
        with open(outcome_path, 'w') as f:
            json.dump(outcome, f)

    try:
        result = TorchTrainer(
            train_loop_per_worker,
            scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
            run_config=RunConfig(storage_path=storage_path, name='composer'),
        ).fit()
        with open(outcome_path) as f:
            report(error=repr(result.error) if result.error else None, outcome=json.load(f))
    finally:
        ray.shutdown()


if __name__ == '__main__':
    main(__name__)
