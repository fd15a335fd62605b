# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Handlers are installed while an Engine is open, shared, and restored exactly when the last one closes.

The scenarios are in ``scenarios/lifecycle_scenarios.py``.
"""

MODULE = 'lifecycle_scenarios.py'


def test_installed_during_fit_and_restored_by_close(run_scenario):
    scenario = run_scenario(MODULE, 'installed_during_fit_and_restored_by_close')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'during_fit': [True, True], 'restored': [True, True]}


def test_two_trainers_share_one_installation(run_scenario):
    scenario = run_scenario(MODULE, 'two_trainers_share_one_installation')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'shared': True,
        'after_first': [True, True],
        'after_double_close': [True, True],
        'restored': [True, True],
    }


def test_handler_replaced_by_user_survives_close(run_scenario):
    scenario = run_scenario(MODULE, 'handler_replaced_by_user_survives_close')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'sigterm_is_mine': True, 'sigint_restored': True}


def test_users_handler_installed_first_is_called_and_restored(run_scenario):
    scenario = run_scenario(MODULE, 'users_handler_installed_first_is_called_and_restored')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'received': ['SIGTERM'], 'restored': True}


def test_ignored_signal_stays_ignored(run_scenario):
    scenario = run_scenario(MODULE, 'ignored_signal_stays_ignored')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'survived': True, 'still_ignored': True}


def test_ctrl_c_still_raises_keyboard_interrupt(run_scenario):
    scenario = run_scenario(MODULE, 'ctrl_c_still_raises_keyboard_interrupt')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'outcome': 'KeyboardInterrupt', 'restored': True}


def test_garbage_collection_restores(run_scenario):
    scenario = run_scenario(MODULE, 'garbage_collection_restores')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'installed': [True, True], 'restored': [True, True]}


def test_replaced_engine_neither_leaks_nor_double_releases(run_scenario):
    scenario = run_scenario(MODULE, 'replaced_engine_neither_leaks_nor_double_releases')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'still_held': True, 'restored': [True, True]}


def test_interpreter_exit_closes_engine_then_restores(run_scenario):
    # atexit runs hooks last-in first-out: one registered before the trainer exists runs after Composer's.
    scenario = run_scenario(MODULE, 'interpreter_exit_closes_engine_then_restores')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'events': ['closed with handlers installed', 'restored']}


def test_callbacks_close_once_after_trainer_close_and_interpreter_exit(run_scenario, tmp_path):
    """trainer.close() unregisters the engine's exit hook: close() and post_close() do not run again at exit."""
    scenario = run_scenario(MODULE, 'callbacks_close_once')
    assert scenario.returncode == 0, scenario
    assert (tmp_path / 'closes').read_text().split() == ['close', 'post_close']


def test_collecting_one_engine_keeps_the_exit_hooks_of_the_others(run_scenario, tmp_path):
    """Garbage-collecting a closed trainer must not unregister the exit hook of another, still open, trainer."""
    scenario = run_scenario(MODULE, 'collecting_one_engine_keeps_the_exit_hooks_of_the_others')
    assert scenario.returncode == 0, scenario
    assert (tmp_path / 'closes').read_text().split() == ['first', 'second']
