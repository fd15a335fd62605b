# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Trainers on worker threads: training works, one warning per process, and the original handlers stay put."""


def test_trainer_on_worker_thread_fits_with_one_warning(run_scenario):
    scenario = run_scenario(
        """
before = handlers()
outcomes = []

def worker():
    trainer = make_trainer()
    trainer.fit()
    outcomes.append(int(trainer.state.timestamp.batch))
    trainer.close()

for _ in range(2):  # two trainers, one after the other, each on its own thread
    outcomes.extend(run_in_thread(worker))
report(outcomes=outcomes, warnings=warnings_seen, unchanged=all(a is b for a, b in zip(handlers(), before)))
""",
    )
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['outcomes'] == [8, 8]
    assert results['unchanged'] is True
    assert len(results['warnings']) == 1, results['warnings']
    message = results['warnings'][0]
    for expected in (
        'main thread',
        'enable_signal_handling=False',
        'COMPOSER_SIGNAL_HANDLING=0',
        'trainer.close()',
        'trainer.request_stop()',
        'checkpoints',
    ):
        assert expected in message, message


def test_sixteen_threads_and_main_thread_create_and_close_trainers(run_scenario):
    scenario = run_scenario(
        """
import random

before = handlers()
errors = []
start = threading.Barrier(17)

def worker(seed):
    rng = random.Random(seed)
    try:
        start.wait()
        for _ in range(2):
            trainer = make_trainer(max_duration='2ba')
            if rng.random() < 0.5:
                trainer.fit()
            trainer.close()
    except BaseException as e:
        errors.append(repr(e))

threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
for t in threads:
    t.start()
start.wait()
held_on_main = []
for i in range(4):
    trainer = make_trainer(max_duration='2ba')
    held_on_main.append(all(h is not b for h, b in zip(handlers(), before)))
    trainer.fit()
    trainer.close()
for t in threads:
    t.join(300)
report(errors=errors, alive=[t.name for t in threads if t.is_alive()], held_on_main=held_on_main,
       restored=[a is b for a, b in zip(handlers(), before)], warnings=len(warnings_seen))
""",
        timeout=400,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'errors': [],
        'alive': [],
        'held_on_main': [True] * 4,
        'restored': [True, True],
        'warnings': 1,
    }
