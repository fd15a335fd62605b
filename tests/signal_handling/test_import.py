# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Importing Composer has no signal side effects, on any thread (mosaicml/composer#3151)."""

RECORD_SIGNAL_CALLS = """
calls = []
_original_signal = signal.signal

def recording_signal(signum, handler):
    calls.append(signal.Signals(signum).name)
    return _original_signal(signum, handler)

signal.signal = recording_signal

records = []

class Collect(logging.Handler):
    def emit(self, record):
        if record.name.startswith('composer') and 'signal' in record.getMessage().lower():
            records.append(f'{record.levelname}: {record.getMessage()}')

logging.getLogger().addHandler(Collect(level=logging.DEBUG))
logging.getLogger('composer').setLevel(logging.DEBUG)
"""


def test_import_on_main_thread_leaves_handlers_alone(run_scenario):
    scenario = run_scenario(
        RECORD_SIGNAL_CALLS + """
before = handlers()
import composer
from composer import Trainer
from composer.core import engine
report(unchanged=handlers() == before, same_objects=all(a is b for a, b in zip(handlers(), before)),
       calls=calls, records=records)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'unchanged': True, 'same_objects': True, 'calls': [], 'records': []}


def test_import_in_worker_thread_no_exception_no_warning(run_scenario):
    scenario = run_scenario(
        RECORD_SIGNAL_CALLS + """
import warnings
warnings.simplefilter('error')  # any warning becomes an exception in the thread
before = handlers()

def worker():
    import composer
    from composer import Trainer

errors = run_in_thread(worker)
report(errors=errors, unchanged=all(a is b for a, b in zip(handlers(), before)), calls=calls, records=records)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'errors': [], 'unchanged': True, 'calls': [], 'records': []}
    assert 'signal only works in main thread' not in scenario.stderr


def test_reloading_engine_module_in_thread_is_silent(run_scenario):
    # The scenario of upstream's test_graceful_fallback_when_signal_handler_cannot_be_set, made strict: no warning.
    scenario = run_scenario(
        RECORD_SIGNAL_CALLS + """
import importlib
import composer.core.engine
before = handlers()
errors = run_in_thread(lambda: importlib.reload(composer.core.engine))
report(errors=errors, unchanged=all(a is b for a, b in zip(handlers(), before)), calls=calls, records=records)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'errors': [], 'unchanged': True, 'calls': [], 'records': []}


def test_import_keeps_users_handlers(run_scenario):
    scenario = run_scenario(
        """
def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
signal.signal(signal.SIGINT, signal.SIG_IGN)
import composer
report(sigterm_is_mine=signal.getsignal(signal.SIGTERM) is mine,
       sigint_ignored=signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'sigterm_is_mine': True, 'sigint_ignored': True}
