# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Trainers on worker threads: training works, one warning per process, and the original handlers stay put."""

import os


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
import os
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


def test_race_stress_32_threads_while_the_main_thread_is_signalled_and_stops_are_requested(run_scenario):
    """Race stress: no exception, no deadlock, handlers restored, nothing held at the end. Seeded.

    32 worker threads create, fit and close trainers; the main thread does the same while SIGTERM keeps arriving (the
    user's handler, which Composer chains to, requests stops); 4 more threads call request_stop() on live trainers.
    """
    seed = int(os.environ.get('SIGNAL_RACE_SEED', '20261125'))  # `make stress` repeats it with other seeds
    scenario = run_scenario(
        f"""
import random
import time
import composer.utils.signal_handling as signal_handling

SEED = {seed}
live = []  # trainers that may be fitting right now
live_lock = threading.RLock()  # re-entrant: the SIGTERM handler may run while the main thread holds it
errors = []
stops = {{'signal': 0, 'thread': 0}}
done = threading.Event()

def request_random_stop(rng):
    with live_lock:
        trainer = rng.choice(live) if live else None
    if trainer is not None:
        trainer.request_stop()
        return True
    return False

signal_rng = random.Random(SEED)

def users_sigterm_handler(signum, frame):  # the user's handler: Composer's handler calls it
    if request_random_stop(signal_rng):
        stops['signal'] += 1

signal.signal(signal.SIGTERM, users_sigterm_handler)
before = handlers()

def fit_and_close(rng, iterations):
    for _ in range(iterations):
        trainer = make_trainer(max_duration=f'{{rng.randint(1, 6)}}ba')
        with live_lock:
            live.append(trainer)
        try:
            if rng.random() < 0.8:
                trainer.fit()
        finally:
            with live_lock:
                live.remove(trainer)
            trainer.close()

def worker(index):
    try:
        fit_and_close(random.Random(SEED + index), iterations=3)
    except BaseException as e:
        errors.append(f'worker {{index}}: {{e!r}}')

def stopper(index):
    rng = random.Random(SEED - index)
    while not done.is_set():
        if request_random_stop(rng):
            stops['thread'] += 1
        time.sleep(rng.uniform(0, 0.01))

def signaller():
    rng = random.Random(SEED * 2)
    while not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(rng.uniform(0.005, 0.05))

workers = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
helpers = [threading.Thread(target=stopper, args=(i,)) for i in range(4)] + [threading.Thread(target=signaller)]
started = time.monotonic()
for t in workers + helpers:
    t.start()
try:
    fit_and_close(random.Random(SEED - 100), iterations=12)
except BaseException as e:
    errors.append(f'main: {{e!r}}')
for t in workers:
    t.join(400)
done.set()
for t in helpers:
    t.join(60)
report(
    errors=errors,
    alive=[t.name for t in workers + helpers if t.is_alive()],
    restored=[a is b for a, b in zip(handlers(), before)],
    holders=signal_handling._holders,
    installed=len(signal_handling._installed),
    targets=len(signal_handling._preemption_targets),
    stops=stops,
    seconds=time.monotonic() - started,
)
""",
        timeout=600,
    )
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['errors'] == [] and results['alive'] == [], results
    assert results['restored'] == [True, True]  # the user's SIGTERM handler and Python's SIGINT handler
    assert (results['holders'], results['installed'], results['targets']) == (0, 0, 0)
    assert results['stops']['signal'] > 0 and results['stops']['thread'] > 0, results  # the race really ran
    print(f'race stress, seed {seed}: {results["stops"]} stops in {results["seconds"]:.1f} s')
