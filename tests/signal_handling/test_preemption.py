# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption that loses nothing: ``save_on_preemption`` and ``Trainer.request_stop()``.

A SIGTERM during ``fit()`` lets the batch in flight finish, stops every rank after that same batch, checkpoints it and
exits with 143; resuming from that checkpoint gives the same weights as a run that was never interrupted.
``request_stop()`` does the same from any thread, without a signal, and ``fit()`` returns. A second signal while
stopping or closing ends the process at once.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

#: A deterministic run (dropout, Adam, shuffling sampler: resumption must restore RNG, optimizer and sampler state),
#: a callback that signals or pauses at chosen points and records what the tests check, and helpers. 64 samples in
#: batches of 4: 16 batches per epoch in one process, 8 per rank with two ranks.
RUN = """
import time
import torch
from torch.utils.data import DataLoader, TensorDataset
from composer import Callback, Trainer
from composer.models import ComposerClassifier
from composer.utils import dist

RANK = os.environ.get('RANK', '0')
logging.getLogger().addHandler(logging.StreamHandler())  # Composer's warnings on stderr

def mark(name, value=''):
    with open(f'{name}.rank{RANK}', 'a') as f:
        f.write(f'{value}\\n')

class Probe(Callback):
    def __init__(self, signal_at=None, signal_rank='0', announce_at=None, pause=0.0, close_blocks=None):
        self.signal_at = signal_at  # SIGTERM to this process inside that batch, after its backward pass
        self.signal_rank = signal_rank
        self.announce_at = announce_at  # write a `training` marker at the end of that batch, then pause
        self.pause = pause
        self.close_blocks = close_blocks  # None, 'sleep', 'join' or 'in C': a close() that takes minutes

    def after_backward(self, state, logger):
        if int(state.timestamp.batch) == self.signal_at and RANK == self.signal_rank:
            os.kill(os.getpid(), signal.SIGTERM)

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.announce_at:
            mark('training', os.getpid())
            time.sleep(self.pause)  # the test signals now, while the batch's callbacks run

    def fit_end(self, state, logger):
        mark('fit_end', int(state.timestamp.batch))

    def close(self, state, logger):
        mark('close')
        if self.close_blocks == 'sleep':
            time.sleep(300)
        elif self.close_blocks == 'join':  # like waiting for an upload thread
            worker = threading.Thread(target=time.sleep, args=(300,), daemon=True)
            worker.start()
            worker.join()
        elif self.close_blocks == 'in C':
            block_in_c()

    def post_close(self):
        mark('post_close')

def block_in_c():
    # Wait forever in C, where no Python signal handler runs (as in a hung collective or driver call):
    # pthread_cond_wait does not return on a signal, and ctypes releases the GIL meanwhile.
    import ctypes
    libc = ctypes.CDLL(None)
    mutex, condition = ctypes.create_string_buffer(64), ctypes.create_string_buffer(64)  # static initializers: zeros
    libc.pthread_mutex_lock(mutex)
    libc.pthread_cond_wait(condition, mutex)

def make_run(save_folder='checkpoints', probe=None, **kwargs):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    model = ComposerClassifier(net, num_classes=2)
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(64, 4, generator=generator), torch.randint(0, 2, (64,), generator=generator))
    dataloader = DataLoader(dataset, batch_size=4, sampler=dist.get_sampler(dataset, shuffle=True))
    kwargs.setdefault('max_duration', '2ep')
    kwargs.setdefault('save_interval', '1000ep')  # far in the future: only a stop checkpoints mid-run
    return Trainer(
        model=model,
        train_dataloader=dataloader,
        optimizers=torch.optim.Adam(model.parameters(), lr=0.01),
        device='cpu',
        progress_bar=False,
        seed=42,
        save_folder=save_folder,
        callbacks=[probe or Probe()],
        **kwargs,
    )

def fit_and_record(trainer, tag):
    # How fit() ended (it returned, or SystemExit's code), and rank 0's final weights.
    try:
        trainer.fit()
    except SystemExit as e:
        mark('exit', e.code)
        raise
    mark('exit', 'returned')
    if RANK == '0':
        torch.save(trainer.state.model.state_dict(), f'weights_{tag}.pt')
"""


def _marks(directory: Path, name: str) -> dict[str, list[str]]:
    """The values recorded by ``mark(name, ...)``, per rank."""
    return {p.name.rsplit('.', 1)[1]: p.read_text().split('\n')[:-1] for p in sorted(directory.glob(f'{name}.rank*'))}


def _checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _checkpoint_batch(path: Path) -> int:
    state = torch.load(path, map_location='cpu', weights_only=False)
    return int(state['state']['timestamp']['Timestamp']['batch'])


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == [], f'parameters differ from the uninterrupted run: {different}'


def _assert_both_ranks_stopped_at_one_batch_and_checkpointed_it(directory: Path, logs: str) -> None:
    """Two ranks: both raised SystemExit(143) after stopping at the same batch, which the checkpoint holds."""
    assert _marks(directory, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
    stopped = _marks(directory, 'fit_end')
    assert stopped['rank0'] == stopped['rank1'], logs  # the same batch on every rank
    batch = int(stopped['rank0'][0])
    assert batch < 16, logs  # stopped early: 2 epochs of 8 batches per rank
    assert _checkpoints(directory / 'checkpoints') == [f'ep0-ba{batch}-rank0.pt', 'latest-rank0.pt'], logs
    assert _checkpoint_batch(directory / 'checkpoints' / 'latest-rank0.pt') == batch


def _finish(proc, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except Exception:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f'did not exit within {timeout} s\nstdout: {out}\nstderr: {err}')


@pytest.fixture(scope='module')
def reference_weights(tmp_path_factory, run_scenario_in) -> Path:
    """Final weights of the same run, never interrupted (one process)."""
    directory = tmp_path_factory.mktemp('reference')
    scenario = run_scenario_in(directory, RUN + "fit_and_record(make_run(), 'reference')\n", timeout=300)
    assert scenario.returncode == 0, scenario
    return directory / 'weights_reference.pt'


@pytest.mark.parametrize('moment', ['inside the batch', 'during its callbacks'])
def test_sigterm_mid_fit_checkpoints_the_batch_in_flight_and_exits_143(
    start_scenario,
    wait_for_files,
    tmp_path,
    moment,
):
    if moment == 'inside the batch':
        # SIGTERM after batch 6's backward pass: its optimizer step, callbacks and the checkpoint follow.
        probe, expected_batch = 'Probe(signal_at=5)', 6
    else:
        # SIGTERM from outside while batch 4's BATCH_END callbacks run.
        probe, expected_batch = 'Probe(announce_at=4, pause=3)', 4
    proc = start_scenario(RUN + f"fit_and_record(make_run(probe={probe}, save_on_preemption=True), 'stopped')\n")
    if moment == 'during its callbacks':
        wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
        proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 143, err
    # Exactly one checkpoint, of the batch in flight, through the normal checkpointing (name pattern, latest symlink).
    expected = f'ep0-ba{expected_batch}-rank0.pt'
    assert _checkpoints(tmp_path / 'checkpoints') == [expected, 'latest-rank0.pt'], err
    assert os.readlink(tmp_path / 'checkpoints' / 'latest-rank0.pt') == expected
    assert _checkpoint_batch(tmp_path / 'checkpoints' / expected) == expected_batch
    # fit() raised SystemExit(143) after FIT_END and after the engine closed (callbacks' close and post_close).
    assert _marks(tmp_path, 'exit') == {'rank0': ['143']}
    assert _marks(tmp_path, 'fit_end') == {'rank0': [str(expected_batch)]}
    # ... exactly once each, not again at interpreter exit
    assert _marks(tmp_path, 'close') == {'rank0': ['']} and _marks(tmp_path, 'post_close') == {'rank0': ['']}
    assert f'Preempted (SIGTERM): training stopped after batch {expected_batch}' in err


@pytest.mark.parametrize(
    'signal_at,resume',
    [(5, 'load_path'), (5, 'autoresume'), (15, 'load_path')],
    ids=['mid-epoch, load_path', 'mid-epoch, autoresume', 'last batch of an epoch, load_path'],
)
def test_resume_after_preemption_equals_the_uninterrupted_run(
    start_scenario,
    tmp_path,
    reference_weights,
    signal_at,
    resume,
):
    resume_kwargs = "load_path='checkpoints/latest-rank0.pt'" if resume == 'load_path' else 'autoresume=True'
    proc = start_scenario(
        RUN + f'fit_and_record(make_run(probe=Probe(signal_at={signal_at}), save_on_preemption=True, '
        "run_name='job'), 'stopped')\n",
    )
    _, err = _finish(proc)
    assert proc.returncode == 143, err
    checkpoints = _checkpoints(tmp_path / 'checkpoints')
    assert len(checkpoints) == 2, checkpoints  # the preemption checkpoint and its latest symlink
    assert _checkpoint_batch(tmp_path / 'checkpoints' / 'latest-rank0.pt') == signal_at + 1

    proc = start_scenario(RUN + f"fit_and_record(make_run(run_name='job', {resume_kwargs}), 'resumed')\n")
    _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert _marks(tmp_path, 'fit_end')['rank0'][-1] == '32'  # the original max_duration: 2 epochs of 16 batches
    _assert_same_weights(reference_weights, tmp_path / 'weights_resumed.pt')


def test_request_stop_from_another_thread_returns_with_a_checkpoint(run_scenario, tmp_path):
    scenario = run_scenario(
        RUN + """
at_batch_4 = threading.Event()
requested = threading.Event()

class Pause(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 4:
            at_batch_4.set()
            requested.wait(60)  # the other thread requests the stop while batch 4's callbacks run

trainer = make_run(probe=Probe())
trainer.state.callbacks.append(Pause())

def controller():
    at_batch_4.wait(60)
    trainer.request_stop()
    requested.set()

thread = threading.Thread(target=controller)
thread.start()
fit_and_record(trainer, 'stopped')
thread.join()
stopped_at = int(trainer.state.timestamp.batch)
max_duration = str(trainer.state.max_duration)
trainer.fit()  # the request was used up: the next fit() trains to the end
report(stopped_at=stopped_at, max_duration=max_duration, finished_at=int(trainer.state.timestamp.batch),
       closed=os.path.exists('close.rank0'))
trainer.close()
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'stopped_at': 4, 'max_duration': '2ep', 'finished_at': 32, 'closed': False}
    assert _marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'ep2-ba32-rank0.pt', 'latest-rank0.pt']


def test_request_stop_without_save_folder_says_no_checkpoint(run_scenario):
    scenario = run_scenario(
        RUN + """
messages = []

class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())

logging.getLogger('composer').addHandler(Collect())
trainer = make_run(save_folder=None, max_duration='2ba')
trainer.request_stop()  # before fit(): the next fit() stops as soon as it can
trainer.fit()
report(batch=int(trainer.state.timestamp.batch), messages=[m for m in messages if 'without a checkpoint' in m])
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results['batch'] == 0
    assert len(scenario.results['messages']) == 1
    assert 'save_folder' in scenario.results['messages'][0]


def test_trainer_on_worker_thread_is_stopped_by_the_main_threads_handler(start_scenario, wait_for_files, tmp_path):
    """The documented way in where Composer cannot install handlers: the main thread's handler calls request_stop."""
    proc = start_scenario(
        RUN + """
box = {}

def worker():
    box['trainer'] = make_run(probe=Probe(announce_at=3, pause=3), save_on_preemption=True)
    fit_and_record(box['trainer'], 'stopped')
    box['batch'] = int(box['trainer'].state.timestamp.batch)
    box['trainer'].close()

signal.signal(signal.SIGTERM, lambda signum, frame: box['trainer'].request_stop())
errors = run_in_thread(worker)
report(errors=errors, batch=box.get('batch'), warnings=warnings_seen)
""",
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    results = [line for line in out.splitlines() if line.startswith('RESULT ')]
    assert results, (out, err)
    values = json.loads(results[-1][len('RESULT '):])
    assert values['errors'] == [] and values['batch'] == 3, values
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt']
    # One situation, one warning: it names the cause (a worker thread), save_on_preemption and the remedy.
    assert len(values['warnings']) == 1, values['warnings']
    warning = values['warnings'][0]
    assert 'main thread' in warning and 'save_on_preemption' in warning and 'trainer.request_stop()' in warning


def test_composer_launcher_sigterm_to_one_rank_stops_every_rank_at_the_same_batch(
    start_scenario,
    wait_for_files,
    composer_launcher,
    rank_logs,
    tmp_path,
):
    """Only rank 1's process gets SIGTERM; both ranks stop after the same batch, checkpoint it and exit 143."""
    proc = start_scenario(
        RUN + "fit_and_record(make_run(probe=Probe(announce_at=3, pause=0.2), save_on_preemption=True), 'stopped')\n",
        launcher=composer_launcher(),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    rank1_pid = int((tmp_path / 'training.rank1').read_text())
    os.kill(rank1_pid, signal.SIGTERM)
    _, err = _finish(proc)
    logs = rank_logs() + err
    assert proc.returncode == 143, logs
    _assert_both_ranks_stopped_at_one_batch_and_checkpointed_it(tmp_path, logs)
    assert _marks(tmp_path, 'close') == {'rank0': [''], 'rank1': ['']}, logs  # once per rank
    assert _marks(tmp_path, 'post_close') == {'rank0': [''], 'rank1': ['']}, logs

    # Resuming on two ranks gives the weights of an uninterrupted two-rank run.
    resumed = start_scenario(
        RUN + "fit_and_record(make_run(load_path='checkpoints/latest-rank0.pt'), 'resumed')\n",
        launcher=composer_launcher(),
    )
    _, err = _finish(resumed, timeout=240)
    assert resumed.returncode == 0, rank_logs() + err
    reference = start_scenario(
        RUN + "fit_and_record(make_run(save_folder=None), 'reference')\n",
        launcher=composer_launcher(),
    )
    _, err = _finish(reference, timeout=240)
    assert reference.returncode == 0, rank_logs() + err
    _assert_same_weights(tmp_path / 'weights_reference.pt', tmp_path / 'weights_resumed.pt')


def test_torchrun_agent_sigterm_stops_every_rank_at_the_same_batch(
    start_scenario,
    wait_for_files,
    torchrun,
    tmp_path,
):
    """SIGTERM to the torchrun agent, which forwards it to its workers: all stop at one batch, checkpoint, exit 143."""
    proc = start_scenario(
        RUN + "fit_and_record(make_run(probe=Probe(announce_at=3, pause=0.2), save_on_preemption=True), 'stopped')\n",
        launcher=torchrun(),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode != 0  # torchrun reports its own SignalException
    _assert_both_ranks_stopped_at_one_batch_and_checkpointed_it(tmp_path, err)


@pytest.mark.parametrize('save_on_preemption', [True, False])
@pytest.mark.parametrize(
    'second,blocked_in',
    [
        (signal.SIGTERM, 'sleep'),
        (signal.SIGINT, 'sleep'),
        (signal.SIGTERM, 'join'),
    ],
)
def test_second_signal_during_a_blocking_close_ends_the_process_at_once(
    start_scenario,
    wait_for_files,
    tmp_path,
    save_on_preemption,
    second,
    blocked_in,
):
    proc = start_scenario(
        RUN + f"""
trainer = make_run(probe=Probe(announce_at=3, pause=2, close_blocks={blocked_in!r}),
                   save_on_preemption={save_on_preemption})
fit_and_record(trainer, 'stopped')
""",
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    first_sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)  # the engine is closing, its close() blocks for minutes
    time.sleep(max(0.0, first_sent + 0.5 - time.monotonic()))  # a later signal, not the first delivered twice
    second_sent = time.monotonic()
    proc.send_signal(second)
    _, err = _finish(proc, timeout=60)
    elapsed = time.monotonic() - second_sent
    assert proc.returncode == 128 + second, err
    assert f'received {signal.Signals(second).name} again while stopping' in err
    assert elapsed < 30, elapsed  # not the 300 s that close() would have taken
    assert 'post_close.rank0' not in os.listdir(tmp_path)
    expected = ['ep0-ba3-rank0.pt', 'latest-rank0.pt'] if save_on_preemption else []
    assert _checkpoints(tmp_path / 'checkpoints') == expected


#: A short fit whose callback's close() takes 2 s (a flush, an upload), marking `close` and `closed` around it.
SLOW_CLOSE_AFTER_FIT = RUN + """
class SlowClose(Probe):
    def close(self, state, logger):
        mark('close')
        time.sleep(2)
        mark('closed')

trainer = make_run(probe=SlowClose(), max_duration='2ba')
trainer.fit()
"""


@pytest.mark.parametrize('first', [signal.SIGTERM, signal.SIGINT])
def test_first_signal_during_trainer_close_takes_effect_once_it_has_closed(
    start_scenario,
    wait_for_files,
    tmp_path,
    first,
):
    """The callbacks' close() (a flush, an upload) is not cut short, runs once, and the signal still takes effect."""
    proc = start_scenario(
        SLOW_CLOSE_AFTER_FIT + """
try:
    trainer.close()
except BaseException as e:
    mark('raised', f'{type(e).__name__} {getattr(e, "code", "")}'.strip())
    raise
mark('raised', 'nothing')
""",
    )
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    proc.send_signal(first)
    _, err = _finish(proc, timeout=60)
    assert _marks(tmp_path, 'close') == {'rank0': ['']}, err  # once: not again at interpreter exit
    assert _marks(tmp_path, 'closed') == {'rank0': ['']}, err
    assert _marks(tmp_path, 'post_close') == {'rank0': ['']}, err
    effect = 'SystemExit 143' if first == signal.SIGTERM else 'KeyboardInterrupt'
    assert _marks(tmp_path, 'raised') == {'rank0': [effect]}, err
    assert f'received {signal.Signals(first).name} while the engine closes' in err
    if first == signal.SIGTERM:
        assert proc.returncode == 143, err


def test_first_signal_while_engines_close_at_interpreter_exit_lets_the_exit_go_on(
    start_scenario,
    wait_for_files,
    tmp_path,
):
    """The program ended without closing its trainer: the exit hook's close finishes once, without a traceback."""
    proc = start_scenario(
        SLOW_CLOSE_AFTER_FIT,
    )
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc, timeout=60)
    assert _marks(tmp_path, 'closed') == {'rank0': ['']}, err
    assert _marks(tmp_path, 'post_close') == {'rank0': ['']}, err
    assert 'received SIGTERM while the engine closes; the interpreter exits once it has closed' in err
    assert 'Traceback' not in err and 'Exception ignored' not in err, err
    assert proc.returncode == 0, err  # the program's own status: it had ended normally


@pytest.mark.parametrize('moment', ['before fit', 'after fit'])
def test_sigterm_outside_fit_exits_143_promptly(start_scenario, wait_for_files, tmp_path, moment):
    proc = start_scenario(
        RUN + f"""
trainer = make_run(save_on_preemption=True, max_duration='2ba')
if {moment == 'after fit'}:
    trainer.fit()
mark('training', os.getpid())
time.sleep(300)
""",
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc, timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 30
    expected = ['ep0-ba2-rank0.pt', 'latest-rank0.pt'] if moment == 'after fit' else []
    assert _checkpoints(tmp_path / 'checkpoints') == expected  # nothing saved by the signal itself


def test_sigint_keeps_raising_keyboard_interrupt_with_save_on_preemption(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(
        RUN + 'fit_and_record(make_run(probe=Probe(announce_at=3, pause=3), save_on_preemption=True), '
        "'stopped')\n",
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    assert 'KeyboardInterrupt' in err
    assert proc.returncode != 0
    assert _checkpoints(tmp_path / 'checkpoints') == []


def test_save_on_preemption_argument_is_validated_at_construction(run_scenario):
    scenario = run_scenario(
        RUN + """
from composer.callbacks import CheckpointSaver

outcomes = {}
for name, kwargs in {
    'no save_folder': dict(save_folder=None, save_on_preemption=True),
    'a CheckpointSaver callback': dict(save_folder=None, save_on_preemption=True),
    'not a bool': dict(save_on_preemption='yes'),
    'an int': dict(save_on_preemption=1),
}.items():
    try:
        trainer = make_run(**kwargs) if name != 'a CheckpointSaver callback' else make_run(
            probe=CheckpointSaver(folder='saver'), **kwargs)
        trainer.close()
        outcomes[name] = 'ok'
    except (TypeError, ValueError) as e:
        outcomes[name] = f'{type(e).__name__}: {e}'
report(**outcomes)
""",
    )
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['no save_folder'].startswith('ValueError: save_on_preemption=True')
    assert 'save_folder' in results['no save_folder']
    assert results['a CheckpointSaver callback'] == 'ok'
    assert results['not a bool'].startswith("TypeError: save_on_preemption must be True, False or None, but got 'yes'")
    assert results['an int'].startswith('TypeError: save_on_preemption must be True, False or None, but got 1')


def test_stop_votes_add_no_collective(run_scenario):
    """The votes travel in the all-reduce of samples and tokens: the same collectives with and without the feature."""
    scenario = run_scenario(
        RUN + """
from composer.utils import dist as composer_dist

counts = {}
for name in ('all_reduce', 'broadcast', 'all_gather', 'all_gather_object', 'broadcast_object_list', 'barrier'):
    original = getattr(composer_dist, name)

    def counted(*args, _name=name, _original=original, **kwargs):
        counts[_name] = counts.get(_name, 0) + 1
        return _original(*args, **kwargs)

    setattr(composer_dist, name, counted)

per_mode = {}
for mode in (False, True):
    trainer = make_run(save_folder=f'checkpoints_{mode}', save_on_preemption=mode, max_duration='6ba')
    counts.clear()
    trainer.fit()
    per_mode[str(mode)] = dict(counts)
    trainer.close()
report(**per_mode)
""",
    )
    assert scenario.returncode == 0, scenario
    without, with_feature = scenario.results['False'], scenario.results['True']
    assert without == with_feature, scenario.results
    assert without['all_reduce'] >= 6  # counted: at least the samples-and-tokens all-reduce of each of the 6 batches


def test_forked_child_gets_the_os_default_not_the_parents_shutdown(start_scenario, wait_for_files, tmp_path):
    """os.fork() during a preemptible fit: SIGTERM kills the child as by default; no close, checkpoint or stop."""
    proc = start_scenario(
        RUN + """
class Fork(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            pid = os.fork()
            if pid == 0:  # the child: announce, then wait to be signalled
                mark('child', os.getpid())
                time.sleep(300)
                os._exit(0)
            mark('forked', pid)
            for _ in range(600):  # the parent waits for the child's end before it trains on
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.05)
            mark('child_status', os.waitstatus_to_exitcode(status) if done else 'alive')

trainer = make_run(probe=Probe(), save_on_preemption=True, max_duration='4ba')
trainer.state.callbacks.append(Fork())
fit_and_record(trainer, 'parent')
trainer.close()
""",
    )
    wait_for_files(str(tmp_path / 'child.rank0'), 1, proc)
    child_pid = int((tmp_path / 'child.rank0').read_text())
    os.kill(child_pid, signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert _marks(tmp_path, 'child_status') == {'rank0': [str(-signal.SIGTERM)]}, err  # killed by the signal
    # The parent trained to the end undisturbed; the child closed nothing and saved nothing.
    assert _marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert _marks(tmp_path, 'close') == {'rank0': ['']}
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'latest-rank0.pt']


def test_dataloader_workers_survive_a_job_wide_sigterm_so_the_batch_is_saved(start_scenario, wait_for_files, tmp_path):
    """SLURM signals every process of a job: the workers (num_workers=2) keep serving until the parent stops."""
    import psutil
    proc = start_scenario(
        RUN + """
from torch.utils.data import DataLoader

trainer = make_run(probe=Probe(announce_at=3, pause=3), save_on_preemption=True)
dataset = trainer.state.train_dataloader.dataset
loader = DataLoader(dataset, batch_size=4, sampler=dist.get_sampler(dataset, shuffle=True), num_workers=2)
try:
    trainer.fit(train_dataloader=loader)
except SystemExit as e:
    mark('exit', e.code)
    raise
""",
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2, workers
    for process in [psutil.Process(proc.pid), *workers]:  # the whole job at once, parent first
        process.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 143, err
    assert 'DataLoader worker' not in err, err
    assert _marks(tmp_path, 'exit') == {'rank0': ['143']}
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt'], err
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], alive  # no worker outlives the job


#: LLM Foundry's ``RunTimeoutCallback`` pattern: at ``fit_end``, a daemon timer sends the process one SIGINT (after
#: 1 s here); the engine closes in the exit hooks, and a callback's close() hangs there.

WATCHDOG_AFTER_FIT = RUN + """
class RunTimeout(Callback):
    def fit_end(self, state, logger):
        timer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()

trainer = make_run(probe=Probe(close_blocks='sleep'), max_duration='2ba')
trainer.state.callbacks.append(RunTimeout())
trainer.fit()
mark('fitted')
# The program ends without closing the trainer: its engine closes in the exit hooks, where close() hangs.
"""


def test_one_sigint_from_a_watchdog_timer_ends_a_close_that_hangs_at_exit(start_scenario, wait_for_files, tmp_path):
    """LLM Foundry's RunTimeoutCallback: one SIGINT after fit_end breaks a hung close, as on upstream."""
    started = time.monotonic()
    proc = start_scenario(WATCHDOG_AFTER_FIT, env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'})
    _, err = _finish(proc, timeout=150)
    assert _marks(tmp_path, 'fitted') == {'rank0': ['']}, err
    assert _marks(tmp_path, 'close') == {'rank0': ['']}, err
    assert time.monotonic() - started < 120, err  # the close alone would take 300 s
    # Upstream: 0, the program's status (its SystemExit(130) is "ignored in atexit callback"). The fork: 130, the
    # exit once the close timeout ran out (asserted with its stderr line below).
    assert proc.returncode in (0, 130), err


def test_a_close_that_outlasts_the_timeout_is_named_on_stderr(start_scenario, tmp_path):
    proc = start_scenario(WATCHDOG_AFTER_FIT, env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'})
    _, err = _finish(proc, timeout=150)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if 'has not finished after 3 s' in line]
    assert len(lines) == 1, err
    assert lines[0].startswith('Composer: SIGINT arrived while the engine was closing'), lines
    assert 'still in Probe.close' in lines[0] and 'COMPOSER_SIGNAL_CLOSE_TIMEOUT' in lines[0], lines
    assert 'post_close.rank0' not in os.listdir(tmp_path)


#: A short fit, then trainer.close(), whose callback close() hangs as given by CLOSE_BLOCKS.
HUNG_TRAINER_CLOSE = RUN + """
trainer = make_run(probe=Probe(close_blocks=os.environ['CLOSE_BLOCKS']), max_duration='2ba')
trainer.fit()
trainer.close()
"""


@pytest.mark.parametrize('blocks', ['sleep', 'in C'])
def test_one_sigterm_during_a_hung_trainer_close_exits_143_within_the_timeout(
    start_scenario,
    wait_for_files,
    tmp_path,
    blocks,
):
    """Also when the main thread waits in C code, where no Python signal handler runs: the watchdog thread acts."""
    proc = start_scenario(HUNG_TRAINER_CLOSE, env={'CLOSE_BLOCKS': blocks, 'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '3'})
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc, timeout=60)
    assert proc.returncode == 143, err
    assert 3 <= time.monotonic() - sent < 30, err
    assert 'SIGTERM arrived while the engine was closing, and the close has not finished after 3 s' in err
    assert 'still in Probe.close' in err
    if blocks == 'in C':
        assert 'waiting in block_in_c' in err


def test_a_second_signal_during_a_close_blocked_in_c_ends_the_process_at_once(start_scenario, wait_for_files, tmp_path):
    proc = start_scenario(HUNG_TRAINER_CLOSE, env={'CLOSE_BLOCKS': 'in C', 'COMPOSER_SIGNAL_CLOSE_TIMEOUT': '120'})
    wait_for_files(str(tmp_path / 'close.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 60, err  # not the 120 s timeout
    assert 'received SIGINT again while stopping' in err


def test_an_invalid_close_timeout_is_a_value_error_at_construction(run_scenario):
    scenario = run_scenario(
        RUN + """
try:
    make_run()
except ValueError as e:
    report(error=str(e))
""",
        env={'COMPOSER_SIGNAL_CLOSE_TIMEOUT': 'soon'},
    )
    assert scenario.returncode == 0, scenario
    assert "COMPOSER_SIGNAL_CLOSE_TIMEOUT='soon' is not valid" in scenario.results['error']


def test_asyncio_keeps_its_signal_wakeup_while_a_trainer_holds_the_handlers(run_scenario):
    """Composer's watchdog takes the wakeup fd and passes every signal on to the one that was set before."""
    scenario = run_scenario(
        RUN + """
import asyncio

async def main():
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, received.set)  # asyncio learns of the signal through its wakeup fd
    asyncio_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(asyncio_fd)
    trainer = make_run(max_duration='1ba')
    took_wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(took_wakeup_fd)
    os.kill(os.getpid(), signal.SIGUSR1)
    try:
        await asyncio.wait_for(received.wait(), 10)
        seen = True
    except asyncio.TimeoutError:
        seen = False
    trainer.close()
    restored = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(restored)
    report(seen=seen, replaced=took_wakeup_fd != asyncio_fd, restored=restored == asyncio_fd)
    loop.remove_signal_handler(signal.SIGUSR1)

asyncio.run(main())
""",
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'seen': True, 'replaced': True, 'restored': True}, scenario


#: A parent that imported Composer (and, with PARENT_TRAINER=1, holds a Trainer of its own) starts a child by fork
#: (START=multiprocessing or os.fork) that creates and fits its own Trainer in ./child and is signalled by the test.
FORKED_CHILD_WITH_A_TRAINER = RUN + """
import multiprocessing

def child():
    os.makedirs('child', exist_ok=True)
    os.chdir('child')
    kwargs = {} if os.environ['CHILD_SAVE_ON_PREEMPTION'] == 'default' else {'save_on_preemption': True}
    trainer = make_run(probe=Probe(announce_at=3, pause=3), **kwargs)
    fit_and_record(trainer, 'child')

def exit_code_of_child():
    # As multiprocessing does: the child's trainer is released (and its engine closed) before the child ends.
    try:
        child()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0

parent_trainer = make_run(save_folder=None) if os.environ['PARENT_TRAINER'] == '1' else None
if os.environ['START'] == 'multiprocessing':
    process = multiprocessing.get_context('fork').Process(target=child)
    process.start()
    process.join(150)
    mark('child_status', process.exitcode)
else:
    pid = os.fork()
    if pid == 0:
        os._exit(exit_code_of_child())
    mark('child_status', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
if parent_trainer is not None:
    parent_trainer.close()
"""


@pytest.mark.parametrize('save_on_preemption', ['default', 'True'])
@pytest.mark.parametrize('start,parent_trainer', [('multiprocessing', '0'), ('os.fork', '1')])
def test_a_forked_child_that_creates_its_own_trainer_gets_the_full_behaviour(
    start_scenario,
    wait_for_files,
    tmp_path,
    start,
    parent_trainer,
    save_on_preemption,
):
    """Owner, not "was forked": SIGTERM to such a child exits 143 after a clean close (and checkpoints if asked)."""
    proc = start_scenario(
        FORKED_CHILD_WITH_A_TRAINER,
        env={
            'START': start,
            'PARENT_TRAINER': parent_trainer,
            'CHILD_SAVE_ON_PREEMPTION': save_on_preemption,
        },
    )
    wait_for_files(str(tmp_path / 'child' / 'training.rank0'), 1, proc)
    child_pid = int((tmp_path / 'child' / 'training.rank0').read_text())
    assert child_pid != proc.pid
    os.kill(child_pid, signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert _marks(tmp_path, 'child_status') == {'rank0': ['143']}, err
    assert _marks(tmp_path / 'child', 'exit') == {'rank0': ['143']}, err
    assert _marks(tmp_path / 'child', 'close') == {'rank0': ['']}, err  # the child's own engine closed cleanly
    assert _marks(tmp_path / 'child', 'post_close') == {'rank0': ['']}, err
    expected = ['ep0-ba3-rank0.pt', 'latest-rank0.pt'] if save_on_preemption == 'True' else []
    assert _checkpoints(tmp_path / 'child' / 'checkpoints') == expected


def test_a_multiprocessing_fork_child_without_a_trainer_gets_the_os_default(start_scenario, wait_for_files, tmp_path):
    """The child only inherited the parent's handlers (the parent fits): the signal's own effect, no shutdown."""
    proc = start_scenario(
        RUN + """
import multiprocessing

def child():
    mark('child', os.getpid())
    time.sleep(300)

class Fork(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            process = multiprocessing.get_context('fork').Process(target=child)
            process.start()
            process.join(150)
            mark('child_status', process.exitcode)

trainer = make_run(probe=Probe(), save_on_preemption=True, max_duration='4ba')
trainer.state.callbacks.append(Fork())
fit_and_record(trainer, 'parent')
trainer.close()
""",
    )
    wait_for_files(str(tmp_path / 'child.rank0'), 1, proc)
    os.kill(int((tmp_path / 'child.rank0').read_text()), signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert _marks(tmp_path, 'child_status') == {'rank0': [str(-signal.SIGTERM)]}, err  # killed by the signal
    assert _marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert _marks(tmp_path, 'close') == {'rank0': ['']}  # only the parent's close
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'latest-rank0.pt']


def test_composer_save_on_preemption_turns_it_on_without_code(start_scenario, wait_for_files, tmp_path):
    """For frameworks that build the Trainer themselves (LLM Foundry): one variable in the job spec."""
    proc = start_scenario(
        RUN + "fit_and_record(make_run(probe=Probe(announce_at=3, pause=3)), 'stopped')\n",
        env={'COMPOSER_SAVE_ON_PREEMPTION': '1'},
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    assert proc.returncode == 143, err
    assert _marks(tmp_path, 'exit') == {'rank0': ['143']}, err
    assert _checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt'], err


def test_composer_save_on_preemption_reaches_a_trainer_without_save_folder_as_one_warning(run_scenario):
    """An evaluation-only Trainer in the same job runs on, without preemption saving, after one warning."""
    scenario = run_scenario(
        RUN + """
trainer = make_run(save_folder=None, max_duration='2ba')
trainer.fit()
trainer.close()
report(warnings=warnings_seen, batch=int(trainer.state.timestamp.batch))
""",
        env={'COMPOSER_SAVE_ON_PREEMPTION': 'yes'},
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results['batch'] == 2
    assert len(scenario.results['warnings']) == 1, scenario.results
    assert 'COMPOSER_SAVE_ON_PREEMPTION' in scenario.results['warnings'][0]
    assert 'save_folder' in scenario.results['warnings'][0]
