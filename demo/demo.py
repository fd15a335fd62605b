"""Show the fork's signal handling working, case by case, in the installed fork (``make demo``).

Each case runs in a fresh interpreter (signal dispositions are process-wide), a function of ``demo/cases.py``, and
prints what happened. The demo exits non-zero if any case does not behave as the fork promises.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The cases' module: ``python demo/cases.py <case> '<JSON object of keyword arguments>'``.
CASES_MODULE = Path(__file__).resolve().parent / 'cases.py'

#: The cases that only print what happened, by title: their functions in :data:`CASES_MODULE`.
CASES = {
    'import composer in a worker thread': 'import_in_worker_thread',
    'a Trainer in a worker thread': 'trainer_in_worker_thread',
    'Ray 2.9 DeferSigint stand-in (setting a SIGINT handler raises)': 'ray_defer_sigint',
    'the opt-out: Trainer(enable_signal_handling=False)': 'opt_out',
    'Trainer.request_stop() from the main thread stops a Trainer on a worker thread': 'request_stop_from_main_thread',
    'handlers live exactly as long as the Trainer': 'handlers_live_with_trainer',
}


def case_command(case: str, **kwargs: Any) -> list[str]:
    """The command line that runs ``case`` of :data:`CASES_MODULE` with the keyword arguments ``kwargs``."""
    return [sys.executable, str(CASES_MODULE), case, json.dumps(kwargs)]


def run_case(title: str, case: str) -> bool:
    """Run ``case`` and show the lines it printed for the demo (and any traceback); whether it exited with 0."""
    print(f'\n== {title}')
    proc = subprocess.run(
        case_command(case),
        text=True,
        timeout=300,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith('    ') or 'Traceback' in line or 'Error' in line:
            print(line)
    print('   ', 'OK' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})')
    return proc.returncode == 0


def start(command: list[str], stderr: int, wait_for_training: bool) -> subprocess.Popen:
    """Start ``command``; with ``wait_for_training``, return once it printed ``TRAINING``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    if wait_for_training:
        for line in proc.stdout:
            if line.startswith('TRAINING'):
                break
    return proc


def run_sigterm(title: str, trainer_kwargs: dict[str, Any], expected_returncode: int) -> bool:
    """SIGTERM to a long fit (``long_fit`` of the cases) once it trains; whether it exits with ``expected_returncode``.

    Args:
        title: what the case shows.
        trainer_kwargs: more keyword arguments of ``make_trainer``.
        expected_returncode: the exit status the fork promises.

    Returns:
        Whether the case behaved as expected.
    """
    print(f'\n== {title}')
    command = case_command('long_fit', trainer_kwargs=trainer_kwargs)
    proc = start(command, stderr=subprocess.DEVNULL, wait_for_training=True)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    elapsed = time.monotonic() - sent
    print(rest.rstrip() or '    [child] (nothing: the process was killed by the signal)')
    print(f'    SIGTERM sent mid-fit; exit code {proc.returncode} after {elapsed:.2f} s')
    ok = proc.returncode == expected_returncode
    print('   ', 'OK' if ok else f'FAILED (expected {expected_returncode})')
    return ok


def run_preemption() -> bool:
    """An uninterrupted run, a run preempted by SIGTERM and its resumption (``preemption_run`` of the cases)."""
    title = 'save_on_preemption: SIGTERM mid-epoch, a checkpoint of that batch, exit 143, resume to the same weights'
    print(f'\n== {title}')
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = {}
        for mode in ('uninterrupted', 'preempted', 'resumed'):
            folder = Path(tmp) / ('reference' if mode == 'uninterrupted' else 'run') / 'checkpoints'
            command = case_command('preemption_run', mode=mode, folder=str(folder))
            proc = start(command, stderr=subprocess.STDOUT, wait_for_training=mode == 'preempted')
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
    results = [run_case(title, case) for title, case in CASES.items()]
    results.append(run_sigterm('SIGTERM during fit(): graceful exit (code 143) after the engine closed', {}, 143))
    results.append(
        run_sigterm(
            'SIGTERM during fit() with enable_signal_handling=False: the OS default',
            {'enable_signal_handling': False},
            -signal.SIGTERM,
        ),
    )
    results.append(run_preemption())
    print(f'\n{sum(results)} of {len(results)} cases behaved as expected.')
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
