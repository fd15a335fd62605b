"""Show the fork's signal handling working, case by case, in the installed fork (``make demo``).

Each case runs in a fresh interpreter (signal dispositions are process-wide) and prints what happened. The demo exits
non-zero if any case does not behave as the fork promises.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

#: The tests' scenario modules: ``scenario_support.make_trainer`` is the one trainer factory of tests, stress, bench
#: and demo.
SCENARIOS = Path(__file__).resolve().parents[1] / 'tests' / 'signal_handling' / 'scenarios'

PRELUDE = f'SCENARIOS = {str(SCENARIOS)!r}\n' + textwrap.dedent(
    """
    import logging
    import os
    import signal
    import sys
    import threading

    logging.basicConfig(format='    [log] %(levelname)s %(name)s: %(message)s', level=logging.WARNING)
    logging.getLogger('composer.utils.signal_handling').setLevel(logging.INFO)

    sys.path.insert(0, SCENARIOS)  # the trainer factory shared with the tests
    from scenario_support import make_trainer

    def handlers():
        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def same(a, b):
        return all(x is y for x, y in zip(a, b))
    """,
)

CASES = {
    'import composer in a worker thread':
        """
        before = handlers()
        errors = []

        def worker():
            try:
                import composer
            except BaseException as e:
                errors.append(repr(e))

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        print('    exceptions:', errors or 'none', '| SIGTERM/SIGINT handlers unchanged:', same(handlers(), before))
        assert not errors and same(handlers(), before)
    """,
    'a Trainer in a worker thread':
        """
        before = handlers()
        result = {}

        def worker():
            trainer = make_trainer()
            trainer.fit()
            result['batches'] = int(trainer.state.timestamp.batch)
            trainer.close()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        print('    trained', result.get('batches'), 'batches; handlers unchanged:', same(handlers(), before),
              '(one warning above says why and what to do)')
        assert result.get('batches') == 8 and same(handlers(), before)
    """,
    'Ray 2.9 DeferSigint stand-in (setting a SIGINT handler raises)':
        """
        original_signal = signal.signal

        def refusing(signum, handler):
            if signum == signal.SIGINT:
                raise ValueError("Can't set signal handler for SIGINT while SIGINT is being deferred")
            return original_signal(signum, handler)

        before = handlers()
        signal.signal = refusing
        try:
            import composer
            trainer = make_trainer()
            trainer.fit()
            trainer.close()
        finally:
            signal.signal = original_signal
        print('    import + Trainer + fit inside the context: OK; handlers unchanged:', same(handlers(), before))
        assert same(handlers(), before)
    """,
    'the opt-out: Trainer(enable_signal_handling=False)':
        """
        calls = []
        original_signal = signal.signal
        signal.signal = lambda s, h: calls.append(s) or original_signal(s, h)
        trainer = make_trainer(enable_signal_handling=False)
        trainer.fit()
        trainer.close()
        print('    signal.signal calls by Composer:', len(calls))
        assert calls == []
    """,
    'Trainer.request_stop() from the main thread stops a Trainer on a worker thread':
        """
        import tempfile, time
        from composer import Callback

        started = threading.Event()

        class Announce(Callback):
            def batch_end(self, state, logger):
                started.set()
                time.sleep(0.05)

        with tempfile.TemporaryDirectory() as folder:
            trainer = make_trainer(save_folder=folder, max_duration='100000ba', callbacks=[Announce()])
            t = threading.Thread(target=trainer.fit)
            t.start()
            started.wait(60)
            trainer.request_stop()  # e.g. from your own SIGTERM handler, or the framework that owns the signals
            t.join(60)
            print('    the worker stopped after batch', int(trainer.state.timestamp.batch), 'and saved',
                  sorted(f for f in os.listdir(folder) if f.startswith('ep')))
            assert not t.is_alive() and len([f for f in os.listdir(folder) if f.startswith('ep')]) == 1
            trainer.close()
    """,
    'handlers live exactly as long as the Trainer':
        """
        before = handlers()
        trainer = make_trainer()
        during = handlers()
        trainer.fit()
        trainer.close()
        print('    while open:', during[0])
        print('    after close(), the original handlers are back:', same(handlers(), before))
        assert not same(during, before) and same(handlers(), before)
    """,
}

SIGTERM_SCRIPT = """
import time
from composer import Callback

class Announce(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            print('TRAINING', flush=True)
        time.sleep(0.05)

    def close(self, state, logger):
        print('    [child] callback close() ran', flush=True)

    def post_close(self):
        print('    [child] callback post_close() ran', flush=True)

trainer = make_trainer(callbacks=[Announce()], max_duration='100000ba', **KWARGS)
trainer.fit()
"""


def run_case(title: str, code: str) -> bool:
    print(f'\n== {title}')
    proc = subprocess.run([sys.executable, '-c', PRELUDE + textwrap.dedent(code)],
                          text=True,
                          timeout=300,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    for line in proc.stdout.splitlines():
        if line.startswith('    ') or 'Traceback' in line or 'Error' in line:
            print(line)
    print('   ', 'OK' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})')
    return proc.returncode == 0


def start(script: Path, stderr: int, wait_for_training: bool) -> subprocess.Popen:
    """Start ``script``; with ``wait_for_training``, return once it printed ``TRAINING``."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    if wait_for_training:
        for line in proc.stdout:
            if line.startswith('TRAINING'):
                break
    return proc


def run_sigterm(title: str, kwargs: str, expected_returncode: int) -> bool:
    print(f'\n== {title}')
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / 'train.py'
        script.write_text(PRELUDE + f'KWARGS = {kwargs}\n' + SIGTERM_SCRIPT)
        proc = start(script, stderr=subprocess.DEVNULL, wait_for_training=True)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        elapsed = time.monotonic() - sent
    print(rest.rstrip() or '    [child] (nothing: the process was killed by the signal)')
    print(f'    SIGTERM sent mid-fit; exit code {proc.returncode} after {elapsed:.2f} s')
    ok = proc.returncode == expected_returncode
    print('   ', 'OK' if ok else f'FAILED (expected {expected_returncode})')
    return ok


PREEMPTION_SCRIPT = """
import time
import torch
from composer import Callback

class Announce(Callback):
    def batch_end(self, state, logger):
        if MODE == 'preempted' and int(state.timestamp.batch) == 10:
            print('TRAINING', flush=True)
        time.sleep(0.02)

trainer = make_trainer('deterministic', hidden=16, dropout=0.2, samples=256, batch_size=8, max_duration='2ep',
                       seed=17, run_name='demo', save_folder=FOLDER, save_interval='1ep',
                       save_on_preemption=MODE == 'preempted', autoresume=MODE == 'resumed', callbacks=[Announce()])
trainer.fit()
torch.save(trainer.state.model.state_dict(), f'{FOLDER}/../{MODE}.pt')
print(f'    [{MODE}] trained to batch {int(trainer.state.timestamp.batch)}', flush=True)
"""


def run_preemption() -> bool:
    title = 'save_on_preemption: SIGTERM mid-epoch, a checkpoint of that batch, exit 143, resume to the same weights'
    print(f'\n== {title}')
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = {}
        for mode in ('uninterrupted', 'preempted', 'resumed'):
            folder = Path(tmp) / ('reference' if mode == 'uninterrupted' else 'run') / 'checkpoints'
            script = Path(tmp) / f'{mode}.py'
            script.write_text(PRELUDE + f'MODE = {mode!r}\nFOLDER = {str(folder)!r}\n' + PREEMPTION_SCRIPT)
            proc = start(script, stderr=subprocess.STDOUT, wait_for_training=mode == 'preempted')
            if mode == 'preempted':
                proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=300)
            outcomes[mode] = proc.returncode
            for line in rest.splitlines():
                if line.startswith('    ') or 'Preempted' in line or 'Traceback' in line:
                    print(line.strip() if 'Preempted' in line else line)
            if mode == 'preempted':
                saved = sorted(p.name for p in folder.glob('ep*'))
                print(f'    [preempted] exit code {proc.returncode}; checkpoints: {saved}')
        import torch
        reference = torch.load(Path(tmp) / 'reference' / 'uninterrupted.pt', weights_only=True)
        resumed = torch.load(Path(tmp) / 'run' / 'resumed.pt', weights_only=True)
        same_weights = all(torch.equal(reference[k], resumed[k]) for k in reference)
    print(f'    resumed run == uninterrupted run, bit for bit: {same_weights}')
    ok = outcomes == {'uninterrupted': 0, 'preempted': 143, 'resumed': 0} and same_weights
    print('   ', 'OK' if ok else f'FAILED ({outcomes})')
    return ok


def main() -> int:
    import composer
    print(f'Composer {composer.__version__} from {os.path.dirname(composer.__file__)}')
    results = [run_case(title, code) for title, code in CASES.items()]
    results.append(run_sigterm('SIGTERM during fit(): graceful exit (code 143) after the engine closed', '{}', 143))
    results.append(
        run_sigterm(
            'SIGTERM during fit() with enable_signal_handling=False: the OS default',
            "{'enable_signal_handling': False}",
            -signal.SIGTERM,
        ),
    )
    results.append(run_preemption())
    print(f'\n{sum(results)} of {len(results)} cases behaved as expected.')
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
