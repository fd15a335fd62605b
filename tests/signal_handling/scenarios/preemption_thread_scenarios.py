# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``Trainer.request_stop()`` across threads: from the main thread's signal handler, and a seeded race stress."""

import os
import random
import signal
import threading
import time

from probes import Probe, fit_and_record
from scenario_support import handlers, log_to_stderr, main, make_trainer, report, run_in_thread, warnings_seen

import composer.utils.signal_handling as signal_handling


def worker_thread_stopped_by_the_main_threads_handler() -> None:
    """The documented way in where Composer cannot install handlers: the main thread's handler calls request_stop."""
    log_to_stderr()
    box = {}

    def worker():
        box['trainer'] = make_trainer(
            'deterministic',
            callbacks=[Probe(announce_at=3, pause=3)],
            save_on_preemption=True,
        )
        fit_and_record(box['trainer'], 'stopped')
        box['batch'] = int(box['trainer'].state.timestamp.batch)
        box['trainer'].close()

    signal.signal(signal.SIGTERM, lambda signum, frame: box['trainer'].request_stop())
    errors = run_in_thread(worker)
    report(errors=errors, batch=box.get('batch'), warnings=warnings_seen())


def race_stress(seed: int) -> None:
    """32 worker threads create, fit and close trainers; the main thread does the same while SIGTERM keeps arriving.

    The user's SIGTERM handler, which Composer chains to, requests stops; 4 more threads call request_stop() on live
    trainers.
    """
    live = []  # trainers that may be fitting right now
    live_lock = threading.RLock()  # re-entrant: the SIGTERM handler may run while the main thread holds it
    errors = []
    stops = {'signal': 0, 'thread': 0}
    done = threading.Event()

    def request_random_stop(rng):
        with live_lock:
            trainer = rng.choice(live) if live else None
        if trainer is not None:
            trainer.request_stop()
            return True
        return False

    signal_rng = random.Random(seed)

    def users_sigterm_handler(signum, frame):  # the user's handler: Composer's handler calls it
        if request_random_stop(signal_rng):
            stops['signal'] += 1

    signal.signal(signal.SIGTERM, users_sigterm_handler)
    before = handlers()

    def fit_and_close(rng, iterations):
        for _ in range(iterations):
            trainer = make_trainer(max_duration=f'{rng.randint(1, 6)}ba')
            with live_lock:
                live.append(trainer)
            try:
                if rng.random() < 0.8:
                    trainer.fit()
            finally:
                with live_lock:
                    live.remove(trainer)
                trainer.close()

    def worker(index):
        try:
            fit_and_close(random.Random(seed + index), iterations=3)
        except BaseException as e:
            errors.append(f'worker {index}: {e!r}')

    def stopper(index):
        rng = random.Random(seed - index)
        while not done.is_set():
            if request_random_stop(rng):
                stops['thread'] += 1
            time.sleep(rng.uniform(0, 0.01))

    def signaller():
        rng = random.Random(seed * 2)
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(rng.uniform(0.005, 0.05))

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    helpers = [threading.Thread(target=stopper, args=(i,)) for i in range(4)] + [threading.Thread(target=signaller)]
    started = time.monotonic()
    for t in workers + helpers:
        t.start()
    try:
        fit_and_close(random.Random(seed - 100), iterations=12)
    except BaseException as e:
        errors.append(f'main: {e!r}')
    for t in workers:
        t.join(400)
    done.set()
    for t in helpers:
        t.join(60)
    report(
        errors=errors,
        alive=[t.name for t in workers + helpers if t.is_alive()],
        restored=[a is b for a, b in zip(handlers(), before)],
        holders=signal_handling._state.holders,
        installed=len(signal_handling._state.installed),
        targets=len(signal_handling._state.sigterm_stops),
        stops=stops,
        seconds=time.monotonic() - started,
    )


if __name__ == '__main__':
    main(__name__)
