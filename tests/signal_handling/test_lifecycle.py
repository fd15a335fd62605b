# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Handlers are installed while an Engine is open, shared, and restored exactly when the last one closes."""


def test_installed_during_fit_and_restored_by_close(run_scenario):
    scenario = run_scenario(
        """
from composer import Callback

before = handlers()
seen = {}

class Probe(Callback):
    def fit_start(self, state, logger):
        seen['during_fit'] = [h is not b for h, b in zip(handlers(), before)]

trainer = make_trainer(callbacks=[Probe()])
trainer.fit()
trainer.close()
report(during_fit=seen['during_fit'], restored=[a is b for a, b in zip(handlers(), before)])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'during_fit': [True, True], 'restored': [True, True]}


def test_two_trainers_share_one_installation(run_scenario):
    scenario = run_scenario(
        """
before = handlers()
first = make_trainer()
installed = handlers()
second = make_trainer()
shared = all(a is b for a, b in zip(handlers(), installed))
first.close()
after_first = [a is b for a, b in zip(handlers(), installed)]
first.close()  # idempotent: a second close must not release the second trainer's hold
first.engine.close()
after_double_close = [a is b for a, b in zip(handlers(), installed)]
second.close()
report(shared=shared, after_first=after_first, after_double_close=after_double_close,
       restored=[a is b for a, b in zip(handlers(), before)])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {
        'shared': True,
        'after_first': [True, True],
        'after_double_close': [True, True],
        'restored': [True, True],
    }


def test_handler_replaced_by_user_survives_close(run_scenario):
    scenario = run_scenario(
        """
before = handlers()
trainer = make_trainer()

def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
trainer.close()
report(sigterm_is_mine=signal.getsignal(signal.SIGTERM) is mine,
       sigint_restored=signal.getsignal(signal.SIGINT) is before[1])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'sigterm_is_mine': True, 'sigint_restored': True}


def test_users_handler_installed_first_is_called_and_restored(run_scenario):
    scenario = run_scenario(
        """
received = []

def mine(signum, frame):
    received.append(signal.Signals(signum).name)

signal.signal(signal.SIGTERM, mine)
trainer = make_trainer()
os.kill(os.getpid(), signal.SIGTERM)  # handled synchronously on the main thread
trainer.fit()
trainer.close()
report(received=received, restored=signal.getsignal(signal.SIGTERM) is mine)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'received': ['SIGTERM'], 'restored': True}


def test_ignored_signal_stays_ignored(run_scenario):
    scenario = run_scenario(
        """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
trainer = make_trainer()
os.kill(os.getpid(), signal.SIGTERM)
trainer.fit()
trainer.close()
report(survived=True, still_ignored=signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'survived': True, 'still_ignored': True}


def test_ctrl_c_still_raises_keyboard_interrupt(run_scenario):
    scenario = run_scenario(
        """
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
trainer = make_trainer()
outcome = None
try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # the handler runs between bytecodes
        pass
except KeyboardInterrupt:
    outcome = 'KeyboardInterrupt'
trainer.close()
report(outcome=outcome, restored=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'outcome': 'KeyboardInterrupt', 'restored': True}


def test_garbage_collection_restores(run_scenario):
    scenario = run_scenario(
        """
import gc
before = handlers()
trainer = make_trainer()
installed = [h is not b for h, b in zip(handlers(), before)]
del trainer
gc.collect()
report(installed=installed, restored=[a is b for a, b in zip(handlers(), before)])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'installed': [True, True], 'restored': [True, True]}


def test_replaced_engine_neither_leaks_nor_double_releases(run_scenario):
    scenario = run_scenario(
        """
import gc

before = handlers()
from composer.core import Engine

keeper = make_trainer()  # a second holder, so a double release would show
trainer = make_trainer()
installed = handlers()
# Replace the engine as a checkpoint-loading path would; the old one is closed or collected.
old = trainer.engine
trainer.engine = Engine(state=trainer.state, logger=trainer.logger)
old.close()
del old
gc.collect()
trainer.close()
still_held = all(a is b for a, b in zip(handlers(), installed))
keeper.close()
report(still_held=still_held, restored=[a is b for a, b in zip(handlers(), before)])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'still_held': True, 'restored': [True, True]}


def test_interpreter_exit_closes_engine_then_restores(run_scenario):
    # atexit runs hooks last-in first-out: one registered before Composer is imported runs after Composer's.
    scenario = run_scenario(
        """
import atexit
from composer import Callback

before = handlers()
events = []

def last_hook():
    events.append('restored' if all(a is b for a, b in zip(handlers(), before)) else 'still installed')
    report(events=events)

atexit.register(last_hook)

class Closer(Callback):
    def close(self, state, logger):
        events.append('closed with handlers ' + ('restored' if handlers() == before else 'installed'))

trainer = make_trainer(callbacks=[Closer()])
trainer.fit()
# No close(): the interpreter exits with the trainer alive.
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'events': ['closed with handlers installed', 'restored']}


def test_callbacks_close_once_after_trainer_close_and_interpreter_exit(run_scenario, tmp_path):
    """trainer.close() unregisters the engine's exit hook: close() and post_close() do not run again at exit."""
    scenario = run_scenario(
        """
from composer import Callback

class Count(Callback):
    def close(self, state, logger):
        with open('closes', 'a') as f:
            f.write('close\\n')

    def post_close(self):
        with open('closes', 'a') as f:
            f.write('post_close\\n')

trainer = make_trainer(callbacks=[Count()])
trainer.fit()
trainer.close()
""",
    )
    assert scenario.returncode == 0, scenario
    assert (tmp_path / 'closes').read_text().split() == ['close', 'post_close']


def test_collecting_one_engine_keeps_the_exit_hooks_of_the_others(run_scenario, tmp_path):
    """Garbage-collecting a closed trainer must not unregister the exit hook of another, still open, trainer."""
    scenario = run_scenario(
        """
import gc
from composer import Callback

class Count(Callback):
    def __init__(self, name):
        self.name = name

    def close(self, state, logger):
        with open('closes', 'a') as f:
            f.write(self.name + '\\n')

first = make_trainer(callbacks=[Count('first')])
second = make_trainer(callbacks=[Count('second')])
first.close()
del first
gc.collect()
# `second` is left open: it must still close at interpreter exit.
""",
    )
    assert scenario.returncode == 0, scenario
    assert (tmp_path / 'closes').read_text().split() == ['first', 'second']
