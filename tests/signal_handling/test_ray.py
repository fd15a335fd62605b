# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Frameworks that own signals: Ray 2.9's raising ``DeferSigint`` (a stand-in) and real Ray (ray-project/ray#42893).

The scenarios are in ``scenarios/ray_scenarios.py``.
"""

import pytest

MODULE = 'ray_scenarios.py'


def test_import_and_trainer_inside_raising_defer_sigint(run_scenario):
    scenario = run_scenario(MODULE, 'import_and_trainer_inside_defer_sigint')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'untouched_inside': True, 'restored': True, 'warnings': []}


def test_explicit_true_inside_raising_defer_sigint_degrades_all_or_nothing(run_scenario):
    scenario = run_scenario(MODULE, 'explicit_true_inside_defer_sigint')
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['untouched_inside'] is True
    assert results['restored'] is True
    assert len(results['warnings']) == 1
    assert 'DeferSigint' in results['warnings'][0]
    assert 'enable_signal_handling=False' in results['warnings'][0]


@pytest.fixture
def ray_available():
    pytest.importorskip('ray')


def test_ray_task_keeps_rays_sigint_handler(run_scenario, ray_available):
    scenario = run_scenario(MODULE, 'train_in_ray_task', timeout=400)
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'sigint_untouched_during': True,
        'sigint_restored': True,
        'sigterm_restored': True,
        'batches': 8,
    }


@pytest.mark.parametrize('trainer_kwargs', [{}, {'enable_signal_handling': True}], ids=['{}', 'enabled'])
def test_ray_cancel_of_task_holding_a_live_trainer(run_scenario, ray_available, trainer_kwargs):
    # With the default, Composer leaves a Ray worker's signals to Ray. Forced on, Composer's SIGINT handler calls
    # Ray's, so cancellation still works.
    scenario = run_scenario(
        MODULE,
        'cancel_ray_task_holding_a_trainer',
        {'trainer_kwargs': trainer_kwargs},
        timeout=400,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'outcome': 'TaskCancelledError'}


def test_ray_train_torch_trainer_fits_composer_trainer(run_scenario, ray_available, tmp_path):
    # Ray Train runs the training function in a worker thread of its worker process (ray-project/ray#42893).
    scenario = run_scenario(
        MODULE,
        'ray_train_torch_trainer',
        {
            'outcome_path': str(tmp_path / 'outcome.json'),
            'storage_path': str(tmp_path / 'ray_results'),
        },
        timeout=500,
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'error': None, 'outcome': {'batches': 8, 'main_thread': False}}
