# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Trainers on worker threads: they train, one warning per process, and the original handlers stay put."""

import random
import threading

from scenario_support import handlers, main, make_trainer, report, run_in_thread, warnings_seen


def trainers_on_worker_threads() -> None:
    before = handlers()
    outcomes = []

    def worker():
        trainer = make_trainer()
        trainer.fit()
        outcomes.append(int(trainer.state.timestamp.batch))
        trainer.close()

    for _ in range(2):  # two trainers, one after the other, each on its own thread
        outcomes.extend(run_in_thread(worker))
    report(outcomes=outcomes, warnings=warnings_seen(), unchanged=all(a is b for a, b in zip(handlers(), before)))


def sixteen_threads_and_main_thread() -> None:
    before = handlers()
    errors = []
    start = threading.Barrier(17)

    def worker(seed):
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(2):
                trainer = make_trainer(max_duration='2ba')
                if rng.random() < 0.5:
                    trainer.fit()
                trainer.close()
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    start.wait()
    held_on_main = []
    for _ in range(4):
        trainer = make_trainer(max_duration='2ba')
        held_on_main.append(all(h is not b for h, b in zip(handlers(), before)))
        trainer.fit()
        trainer.close()
    for t in threads:
        t.join(300)
    report(
        errors=errors,
        alive=[t.name for t in threads if t.is_alive()],
        held_on_main=held_on_main,
        restored=[a is b for a, b in zip(handlers(), before)],
        warnings=len(warnings_seen()),
    )


if __name__ == '__main__':
    main(__name__)
