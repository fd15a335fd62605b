# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The ``enable_signal_handling`` flag and the ``COMPOSER_SIGNAL_HANDLING`` environment variable.

The scenarios are in ``scenarios/flag_scenarios.py``.
"""

import pytest

MODULE = 'flag_scenarios.py'


@pytest.mark.parametrize(
    'argument,env_value,expect_installed',
    [
        (None, None, True),
        (True, None, True),
        (False, None, False),
        (None, '1', True),
        (None, 'TRUE', True),
        (None, 'yes', True),
        (None, 'On', True),
        (None, '0', False),
        (None, 'false', False),
        (None, 'NO', False),
        (None, 'off', False),
        (True, '0', True),  # an explicit argument wins over the variable
        (False, '1', False),
    ],
)
def test_flag_and_environment(run_scenario, argument, env_value, expect_installed):
    env = {} if env_value is None else {'COMPOSER_SIGNAL_HANDLING': env_value}
    kwargs = {} if argument is None else {'enable_signal_handling': argument}
    scenario = run_scenario(MODULE, 'installed_while_open', {'trainer_kwargs': kwargs}, env=env)
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'installed': [expect_installed, expect_installed], 'restored': True}


def test_disabled_never_calls_signal_and_logs_nothing(run_scenario):
    scenario = run_scenario(MODULE, 'disabled_never_calls_signal')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'calls': [], 'records': []}


@pytest.mark.parametrize('value', ['maybe', '2', '', 'enable'])
def test_invalid_environment_value_raises_at_construction(run_scenario, value):
    scenario = run_scenario(
        MODULE,
        'construction_error',
        {
            'trainer_kwargs': {},
            'error': 'ValueError',
        },
        env={'COMPOSER_SIGNAL_HANDLING': value},
    )
    assert scenario.returncode == 0, scenario
    message = scenario.results['error']
    assert 'COMPOSER_SIGNAL_HANDLING' in message
    assert repr(value) in message
    for accepted in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'):
        assert accepted in message


@pytest.mark.parametrize('value', ['yes', 1, 0, 'False'])
def test_non_bool_argument_is_a_type_error(run_scenario, value):
    scenario = run_scenario(
        MODULE,
        'construction_error',
        {
            'trainer_kwargs': {
                'enable_signal_handling': value,
            },
            'error': 'TypeError',
        },
    )
    assert scenario.returncode == 0, scenario
    assert 'enable_signal_handling' in scenario.results['error']
    assert scenario.results['unchanged'] is True
