# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Frameworks that own signals: Ray 2.9's raising ``DeferSigint`` (a stand-in) and real Ray (ray-project/ray#42893)."""

import pytest

#: A stand-in for Ray 2.9's ``DeferSigint``: while active, setting a SIGINT handler on the main thread raises.
DEFER_SIGINT_29 = """
import contextlib

@contextlib.contextmanager
def defer_sigint_29():
    original_signal = signal.signal

    def refusing_signal(signum, handler):
        if threading.current_thread() is threading.main_thread() and signum == signal.SIGINT:
            raise ValueError("Can't set signal handler for SIGINT while SIGINT is being deferred within a "
                             'DeferSigint context.')
        return original_signal(signum, handler)

    signal.signal = refusing_signal
    try:
        yield
    finally:
        signal.signal = original_signal
"""


def test_import_and_trainer_inside_raising_defer_sigint(run_scenario):
    scenario = run_scenario(
        DEFER_SIGINT_29 + """
before = handlers()
with defer_sigint_29():
    import composer
    trainer = make_trainer()
    untouched_inside = all(a is b for a, b in zip(handlers(), before))
    trainer.fit()
    trainer.close()
report(untouched_inside=untouched_inside, restored=all(a is b for a, b in zip(handlers(), before)),
       warnings=warnings_seen)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'untouched_inside': True, 'restored': True, 'warnings': []}


def test_explicit_true_inside_raising_defer_sigint_degrades_all_or_nothing(run_scenario):
    scenario = run_scenario(
        DEFER_SIGINT_29 + """
before = handlers()
with defer_sigint_29():
    trainer = make_trainer(enable_signal_handling=True)
    # SIGTERM was installed first, then SIGINT failed: SIGTERM must have been rolled back.
    untouched_inside = all(a is b for a, b in zip(handlers(), before))
    trainer.fit()
    trainer.close()
    second = make_trainer(enable_signal_handling=True)
    second.close()
report(untouched_inside=untouched_inside, restored=all(a is b for a, b in zip(handlers(), before)),
       warnings=warnings_seen)
""",
    )
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['untouched_inside'] is True
    assert results['restored'] is True
    assert len(results['warnings']) == 1
    assert 'DeferSigint' in results['warnings'][0]
    assert 'enable_signal_handling=False' in results['warnings'][0]


RAY_PRELUDE = """
import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
"""


@pytest.fixture
def ray_available():
    pytest.importorskip('ray')


def test_ray_task_keeps_rays_sigint_handler(run_scenario, ray_available):
    scenario = run_scenario(
        RAY_PRELUDE + """
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
""",
        timeout=400,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'sigint_untouched_during': True,
        'sigint_restored': True,
        'sigterm_restored': True,
        'batches': 8,
    }


@pytest.mark.parametrize('trainer_kwargs', ['{}', '{"enable_signal_handling": True}'])
def test_ray_cancel_of_task_holding_a_live_trainer(run_scenario, ray_available, trainer_kwargs):
    # With the default, Composer leaves a Ray worker's signals to Ray. Forced on, Composer's SIGINT handler calls
    # Ray's, so cancellation still works.
    scenario = run_scenario(
        RAY_PRELUDE + f'TRAINER_KWARGS = {trainer_kwargs}\n' + """
import time
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

    trainer = make_trainer(callbacks=[Slow()], max_duration='100000ba', **TRAINER_KWARGS)
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
""",
        timeout=400,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'outcome': 'TaskCancelledError'}


def test_ray_train_torch_trainer_fits_composer_trainer(run_scenario, ray_available, tmp_path):
    # Ray Train runs the training function in a worker thread of its worker process (ray-project/ray#42893).
    scenario = run_scenario(
        RAY_PRELUDE + f"""
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def train_loop_per_worker(config):
    trainer = make_trainer()
    trainer.fit()
    outcome = {{'batches': int(trainer.state.timestamp.batch),
               'main_thread': threading.current_thread() is threading.main_thread()}}
    trainer.close()
    with open({str(tmp_path / 'outcome.json')!r}, 'w') as f:
        json.dump(outcome, f)

try:
    result = TorchTrainer(
        train_loop_per_worker,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
        run_config=RunConfig(storage_path={str(tmp_path / 'ray_results')!r}, name='composer'),
    ).fit()
    with open({str(tmp_path / 'outcome.json')!r}) as f:
        report(error=repr(result.error) if result.error else None, outcome=json.load(f))
finally:
    ray.shutdown()
""",
        timeout=500,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'error': None, 'outcome': {'batches': 8, 'main_thread': False}}
