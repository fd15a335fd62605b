# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``enable_signal_handling`` and ``COMPOSER_SIGNAL_HANDLING``: installed or not, and the errors of bad values."""

import logging
import signal
import threading
from typing import Any

from scenario_support import LogCollector, handlers, main, make_trainer, report


def installed_while_open(trainer_kwargs: dict[str, Any]) -> None:
    before = handlers()
    trainer = make_trainer(**trainer_kwargs)
    installed = [h is not b for h, b in zip(handlers(), before)]
    trainer.fit()
    trainer.close()
    report(installed=installed, restored=all(a is b for a, b in zip(handlers(), before)))


def disabled_never_calls_signal() -> None:
    calls = []
    original_signal = signal.signal
    signal.signal = lambda signum, handler: calls.append(signum) or original_signal(signum, handler)
    records = LogCollector(lambda record: 'signal' in record.getMessage().lower(), level=logging.DEBUG)
    logging.getLogger('composer').setLevel(logging.DEBUG)

    for _ in range(2):
        trainer = make_trainer(enable_signal_handling=False)
        trainer.fit()
        trainer.close()

    def worker():
        t = make_trainer(enable_signal_handling=False)
        t.fit()
        t.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(120)
    report(calls=calls, records=records.messages)


def construction_error(trainer_kwargs: dict[str, Any], error: str) -> None:
    """Construct a trainer; report the message of the ``error`` (``ValueError`` or ``TypeError``) it raises."""
    before = handlers()
    try:
        make_trainer(**trainer_kwargs)
    except {'ValueError': ValueError, 'TypeError': TypeError}[error] as e:
        report(error=str(e), unchanged=all(a is b for a, b in zip(handlers(), before)))


if __name__ == '__main__':
    main(__name__)
