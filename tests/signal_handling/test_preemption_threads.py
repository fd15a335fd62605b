# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``Trainer.request_stop()`` and threads: the way in for trainers on worker threads, and a seeded race stress.

The scenarios are in ``scenarios/preemption_thread_scenarios.py`` (and ``scenarios/thread_scenarios.py``).
"""

import os
import signal

MODULE = 'preemption_thread_scenarios.py'


def test_the_worker_thread_warning_names_request_stop(run_scenario):
    """The one warning about a trainer on a worker thread names the remedy that keeps preemption working."""
    scenario = run_scenario('thread_scenarios.py', 'trainers_on_worker_threads')
    assert scenario.returncode == 0, scenario
    assert len(scenario.results['warnings']) == 1, scenario.results['warnings']
    assert 'trainer.request_stop()' in scenario.results['warnings'][0]


def test_trainer_on_worker_thread_is_stopped_by_the_main_threads_handler(
    start_scenario,
    wait_for_files,
    finish,
    checkpoints,
    scenario_results,
    tmp_path,
):
    """The documented way in where Composer cannot install handlers: the main thread's handler calls request_stop."""
    proc = start_scenario(MODULE, 'worker_thread_stopped_by_the_main_threads_handler')
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    values = scenario_results(out)
    assert values, (out, err)
    assert values['errors'] == [] and values['batch'] == 3, values
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt']
    # One situation, one warning: it names the cause (a worker thread), save_on_preemption and the remedy.
    assert len(values['warnings']) == 1, values['warnings']
    warning = values['warnings'][0]
    assert 'main thread' in warning and 'save_on_preemption' in warning and 'trainer.request_stop()' in warning


def test_race_stress_32_threads_while_the_main_thread_is_signalled_and_stops_are_requested(run_scenario):
    """Race stress: no exception, no deadlock, handlers restored, nothing held at the end. Seeded.

    32 worker threads create, fit and close trainers; the main thread does the same while SIGTERM keeps arriving (the
    user's handler, which Composer chains to, requests stops); 4 more threads call request_stop() on live trainers.
    """
    seed = int(os.environ.get('SIGNAL_RACE_SEED', '20261125'))  # `make stress` repeats it with other seeds
    scenario = run_scenario(MODULE, 'race_stress', {'seed': seed}, timeout=600)
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['errors'] == [] and results['alive'] == [], results
    assert results['restored'] == [True, True]  # the user's SIGTERM handler and Python's SIGINT handler
    assert (results['holders'], results['installed'], results['targets']) == (0, 0, 0)
    assert results['stops']['signal'] > 0 and results['stops']['thread'] > 0, results  # the race really ran
    print(f'race stress, seed {seed}: {results["stops"]} stops in {results["seconds"]:.1f} s')
