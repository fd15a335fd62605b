# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Importing Composer, on the main thread or a worker thread: which ``signal.signal`` calls and log records follow.

Composer is imported inside each scenario, after :func:`record_signal_calls` started recording.
"""

import importlib
import logging
import signal
import warnings

from scenario_support import LogCollector, handlers, main, report, run_in_thread


def record_signal_calls() -> tuple[list[str], LogCollector]:
    """Record every ``signal.signal`` call (by signal name) and Composer's log records that mention signals."""
    calls = []
    original_signal = signal.signal

    def recording_signal(signum, handler):
        calls.append(signal.Signals(signum).name)
        return original_signal(signum, handler)

    signal.signal = recording_signal
    records = LogCollector(
        lambda record: record.name.startswith('composer') and 'signal' in record.getMessage().lower(),
        level=logging.DEBUG,
    )
    logging.getLogger('composer').setLevel(logging.DEBUG)
    return calls, records


def _formatted(records: LogCollector) -> list[str]:
    return [f'{record.levelname}: {record.getMessage()}' for record in records.records]


def import_on_main_thread() -> None:
    calls, records = record_signal_calls()
    before = handlers()
    import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
    from composer import Trainer  # noqa: F401  # pyright: ignore[reportUnusedImport]
    from composer.core import engine  # noqa: F401  # pyright: ignore[reportUnusedImport]
    report(
        unchanged=handlers() == before,
        same_objects=all(a is b for a, b in zip(handlers(), before)),
        calls=calls,
        records=_formatted(records),
    )


def import_in_worker_thread() -> None:
    calls, records = record_signal_calls()
    warnings.simplefilter('error')  # any warning becomes an exception in the thread
    before = handlers()

    def worker():
        import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
        from composer import Trainer  # noqa: F401  # pyright: ignore[reportUnusedImport]

    errors = run_in_thread(worker)
    report(
        errors=errors,
        unchanged=all(a is b for a, b in zip(handlers(), before)),
        calls=calls,
        records=_formatted(records),
    )


def reload_engine_module_in_thread() -> None:
    calls, records = record_signal_calls()
    import composer.core.engine
    before = handlers()
    errors = run_in_thread(lambda: importlib.reload(composer.core.engine))
    report(
        errors=errors,
        unchanged=all(a is b for a, b in zip(handlers(), before)),
        calls=calls,
        records=_formatted(records),
    )


def import_keeps_users_handlers() -> None:

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import composer  # noqa: F401  # pyright: ignore[reportUnusedImport]
    report(
        sigterm_is_mine=signal.getsignal(signal.SIGTERM) is mine,
        sigint_ignored=signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
    )


if __name__ == '__main__':
    main(__name__)
