# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGTERM during ``fit()``: a graceful exit with code 143, or the OS default when signal handling is disabled."""

import signal
import time

#: Trains "forever" (slowly), announcing progress and recording the closing callbacks in marker files.
LONG_FIT = """
import time
from composer import Callback

marker_dir = sys.argv[1] if len(sys.argv) > 1 else '.'
rank = os.environ.get('RANK', '0')

def mark(name):
    with open(os.path.join(marker_dir, f'{name}.rank{rank}'), 'w') as f:
        f.write(str(os.getpid()))

class Recorder(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            mark('training')
        time.sleep(0.05)

    def close(self, state, logger):
        mark('close')

    def post_close(self):
        mark('post_close')

trainer = make_trainer(callbacks=[Recorder()], max_duration='100000ba', **TRAINER_KWARGS)
trainer.fit()
"""


def _markers(tmp_path):
    return sorted(p.name for p in tmp_path.glob('*.rank*') if not p.name.startswith('training'))


def test_sigterm_during_fit_exits_143_after_closing(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario('TRAINER_KWARGS = {}\n' + LONG_FIT)
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0'], err


def test_sigterm_with_signal_handling_disabled_is_the_os_default(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario('TRAINER_KWARGS = {"enable_signal_handling": False}\n' + LONG_FIT)
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert _markers(tmp_path) == []


def test_users_sigterm_handler_is_called_during_fit(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(
        """
def users_handler(signum, frame):
    with open('user_handler.rank0', 'w') as f:
        f.write('called')
    sys.exit(7)

signal.signal(signal.SIGTERM, users_handler)
TRAINER_KWARGS = {}
""" + LONG_FIT,
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert (tmp_path / 'user_handler.rank0').read_text() == 'called'
    # The user's handler exited through Python, so the engine still closed at exit.
    assert _markers(tmp_path) == ['close.rank0', 'post_close.rank0', 'user_handler.rank0']


def test_composer_launcher_sigterm_closes_every_rank(
    start_scenario,
    wait_for_files,
    composer_launcher,
    rank_logs,
    tmp_path,
):
    """SIGTERM to the launcher: it SIGTERMs its 2 CPU ranks (gloo), each closes its engine, all exit in time."""
    launcher = composer_launcher()
    proc = start_scenario('TRAINER_KWARGS = {}\n' + LONG_FIT, launcher=launcher, script_args=[str(tmp_path)])
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    logs = rank_logs()
    assert _markers(tmp_path) == ['close.rank0', 'close.rank1', 'post_close.rank0', 'post_close.rank1'], logs + err
    assert proc.returncode == 143, logs + err
    # The launcher waits up to 30 s before SIGKILL; ranks that close by themselves finish long before that.
    assert elapsed < 20, (elapsed, logs + err)
