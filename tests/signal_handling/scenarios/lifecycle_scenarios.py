# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Handlers installed while an Engine is open, shared, restored when the last one closes; each engine closed once."""

import atexit
import gc
import os
import signal

from scenario_support import handlers, main, make_trainer, report

from composer import Callback
from composer.core import Engine


def installed_during_fit_and_restored_by_close() -> None:
    before = handlers()
    seen = {}

    class Probe(Callback):

        def fit_start(self, state, logger):
            seen['during_fit'] = [h is not b for h, b in zip(handlers(), before)]

    trainer = make_trainer(callbacks=[Probe()])
    trainer.fit()
    trainer.close()
    report(during_fit=seen['during_fit'], restored=[a is b for a, b in zip(handlers(), before)])


def two_trainers_share_one_installation() -> None:
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
    report(
        shared=shared,
        after_first=after_first,
        after_double_close=after_double_close,
        restored=[a is b for a, b in zip(handlers(), before)],
    )


def handler_replaced_by_user_survives_close() -> None:
    before = handlers()
    trainer = make_trainer()

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    trainer.close()
    report(
        sigterm_is_mine=signal.getsignal(signal.SIGTERM) is mine,
        sigint_restored=signal.getsignal(signal.SIGINT) is before[1],
    )


def users_handler_installed_first_is_called_and_restored() -> None:
    received = []

    def mine(signum, frame):
        received.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, mine)
    trainer = make_trainer()
    os.kill(os.getpid(), signal.SIGTERM)  # handled synchronously on the main thread
    trainer.fit()
    trainer.close()
    report(received=received, restored=signal.getsignal(signal.SIGTERM) is mine)


def ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    trainer = make_trainer()
    os.kill(os.getpid(), signal.SIGTERM)
    trainer.fit()
    trainer.close()
    report(survived=True, still_ignored=signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)


def ctrl_c_still_raises_keyboard_interrupt() -> None:
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


def garbage_collection_restores() -> None:
    before = handlers()
    trainer = make_trainer()
    installed = [h is not b for h, b in zip(handlers(), before)]
    del trainer
    gc.collect()
    report(installed=installed, restored=[a is b for a, b in zip(handlers(), before)])


def replaced_engine_neither_leaks_nor_double_releases() -> None:
    before = handlers()
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


def interpreter_exit_closes_engine_then_restores():
    """atexit runs hooks last-in first-out: this one, registered before the trainer exists, runs after Composer's."""
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
    return trainer  # no close(): the interpreter exits with the trainer alive


class Count(Callback):
    """Appends ``name`` (and ``post_close``, with ``post``) to the file ``closes``."""

    def __init__(self, name: str = 'close', post: bool = False):
        self.name = name
        self.post = post

    def close(self, state, logger):
        with open('closes', 'a') as f:
            f.write(self.name + '\n')

    def post_close(self):
        if self.post:
            with open('closes', 'a') as f:
                f.write('post_close\n')


def callbacks_close_once():
    trainer = make_trainer(callbacks=[Count(post=True)])
    trainer.fit()
    trainer.close()
    return trainer  # alive until the interpreter exits: its exit hook must not close it again


def collecting_one_engine_keeps_the_exit_hooks_of_the_others():
    first = make_trainer(callbacks=[Count('first')])
    second = make_trainer(callbacks=[Count('second')])
    first.close()
    del first
    gc.collect()
    return second  # left open: it must still close at interpreter exit


if __name__ == '__main__':
    main(__name__)
