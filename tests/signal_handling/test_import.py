# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Importing Composer has no signal side effects, on any thread (mosaicml/composer#3151).

The scenarios are in ``scenarios/import_scenarios.py``.
"""

MODULE = 'import_scenarios.py'


def test_import_on_main_thread_leaves_handlers_alone(run_scenario):
    scenario = run_scenario(MODULE, 'import_on_main_thread')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'unchanged': True, 'same_objects': True, 'calls': [], 'records': []}


def test_import_in_worker_thread_no_exception_no_warning(run_scenario):
    scenario = run_scenario(MODULE, 'import_in_worker_thread')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'errors': [], 'unchanged': True, 'calls': [], 'records': []}
    assert 'signal only works in main thread' not in scenario.stderr


def test_reloading_engine_module_in_thread_is_silent(run_scenario):
    # The scenario of upstream's test_graceful_fallback_when_signal_handler_cannot_be_set, made strict: no warning.
    scenario = run_scenario(MODULE, 'reload_engine_module_in_thread')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'errors': [], 'unchanged': True, 'calls': [], 'records': []}


def test_import_keeps_users_handlers(run_scenario):
    scenario = run_scenario(MODULE, 'import_keeps_users_handlers')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'sigterm_is_mine': True, 'sigint_ignored': True}
