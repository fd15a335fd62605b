# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Trainers on worker threads: training works, one warning per process, and the original handlers stay put.

The scenarios are in ``scenarios/thread_scenarios.py``.
"""

MODULE = 'thread_scenarios.py'


def test_trainer_on_worker_thread_fits_with_one_warning(run_scenario):
    scenario = run_scenario(MODULE, 'trainers_on_worker_threads')
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
        'checkpoints',
    ):
        assert expected in message, message


def test_sixteen_threads_and_main_thread_create_and_close_trainers(run_scenario):
    scenario = run_scenario(MODULE, 'sixteen_threads_and_main_thread', timeout=400)
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'errors': [],
        'alive': [],
        'held_on_main': [True] * 4,
        'restored': [True, True],
        'warnings': 1,
    }
