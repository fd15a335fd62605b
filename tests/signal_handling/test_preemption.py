# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption that loses nothing: ``save_on_preemption`` and ``Trainer.request_stop()``.

A SIGTERM during ``fit()`` lets the batch in flight finish, stops every rank after that same batch, checkpoints it and
exits with 143; resuming from that checkpoint gives the same weights as a run that was never interrupted.
``request_stop()`` does the same from any thread, without a signal, and ``fit()`` returns. A second signal while
stopping or closing ends the process at once.

The scenarios are in ``scenarios/preemption_scenarios.py`` (and the lifecycle's ``close_scenarios.py`` and
``fork_scenarios.py``, run here with ``save_on_preemption``). Their runs: 64 samples in batches of 4, 16 batches per
epoch in one process, 8 per rank with two ranks.
"""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

MODULE = 'preemption_scenarios.py'
PREEMPTIBLE = {'save_on_preemption': True}


def _checkpoint_batch(path: Path) -> int:
    state = torch.load(path, map_location='cpu', weights_only=False)
    return int(state['state']['timestamp']['Timestamp']['batch'])


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == [], f'parameters differ from the uninterrupted run: {different}'


@pytest.fixture
def both_ranks_stopped_at_one_batch_and_checkpointed_it(marks, checkpoints, tmp_path):
    """Two ranks: both raised SystemExit(143) after stopping at the same batch, which the checkpoint holds."""

    def check(logs: str) -> None:
        assert marks(tmp_path, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
        stopped = marks(tmp_path, 'fit_end')
        assert stopped['rank0'] == stopped['rank1'], logs  # the same batch on every rank
        batch = int(stopped['rank0'][0])
        assert batch < 16, logs  # stopped early: 2 epochs of 8 batches per rank
        assert checkpoints(tmp_path / 'checkpoints') == [f'ep0-ba{batch}-rank0.pt', 'latest-rank0.pt'], logs
        assert _checkpoint_batch(tmp_path / 'checkpoints' / 'latest-rank0.pt') == batch

    return check


@pytest.fixture(scope='module')
def reference_weights(tmp_path_factory, run_scenario_in) -> Path:
    """Final weights of the same run, never interrupted (one process)."""
    directory = tmp_path_factory.mktemp('reference')
    scenario = run_scenario_in(directory, MODULE, 'fit_with_probe', {'tag': 'reference'}, timeout=300)
    assert scenario.returncode == 0, scenario
    return directory / 'weights_reference.pt'


@pytest.mark.parametrize('moment', ['inside the batch', 'during its callbacks'])
def test_sigterm_mid_fit_checkpoints_the_batch_in_flight_and_exits_143(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    checkpoints,
    tmp_path,
    moment,
):
    if moment == 'inside the batch':
        # SIGTERM after batch 6's backward pass: its optimizer step, callbacks and the checkpoint follow.
        probe, expected_batch = {'signal_at': 5}, 6
    else:
        # SIGTERM from outside while batch 4's BATCH_END callbacks run.
        probe, expected_batch = {'announce_at': 4, 'pause': 3}, 4
    proc = start_scenario(MODULE, 'fit_with_probe', {'probe': probe, 'trainer_kwargs': PREEMPTIBLE})
    if moment == 'during its callbacks':
        wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
        proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 143, err
    # Exactly one checkpoint, of the batch in flight, through the normal checkpointing (name pattern, latest symlink).
    expected = f'ep0-ba{expected_batch}-rank0.pt'
    assert checkpoints(tmp_path / 'checkpoints') == [expected, 'latest-rank0.pt'], err
    assert os.readlink(tmp_path / 'checkpoints' / 'latest-rank0.pt') == expected
    assert _checkpoint_batch(tmp_path / 'checkpoints' / expected) == expected_batch
    # fit() raised SystemExit(143) after FIT_END and after the engine closed (callbacks' close and post_close).
    assert marks(tmp_path, 'exit') == {'rank0': ['143']}
    assert marks(tmp_path, 'fit_end') == {'rank0': [str(expected_batch)]}
    # ... exactly once each, not again at interpreter exit
    assert marks(tmp_path, 'close') == {'rank0': ['']} and marks(tmp_path, 'post_close') == {'rank0': ['']}
    assert f'Preempted (SIGTERM): training stopped after batch {expected_batch}' in err


@pytest.mark.parametrize(
    'signal_at,resume',
    [(5, 'load_path'), (5, 'autoresume'), (15, 'load_path')],
    ids=['mid-epoch, load_path', 'mid-epoch, autoresume', 'last batch of an epoch, load_path'],
)
def test_resume_after_preemption_equals_the_uninterrupted_run(
    start_scenario,
    finish,
    marks,
    checkpoints,
    tmp_path,
    reference_weights,
    signal_at,
    resume,
):
    resume_kwargs = {'load_path': 'checkpoints/latest-rank0.pt'} if resume == 'load_path' else {'autoresume': True}
    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'probe': {
                'signal_at': signal_at,
            },
            'trainer_kwargs': {
                **PREEMPTIBLE,
                'run_name': 'job',
            },
        },
    )
    _, err = finish(proc)
    assert proc.returncode == 143, err
    found = checkpoints(tmp_path / 'checkpoints')
    assert len(found) == 2, found  # the preemption checkpoint and its latest symlink
    assert _checkpoint_batch(tmp_path / 'checkpoints' / 'latest-rank0.pt') == signal_at + 1

    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'trainer_kwargs': {
                'run_name': 'job',
                **resume_kwargs,
            },
            'tag': 'resumed',
        },
    )
    _, err = finish(proc)
    assert proc.returncode == 0, err
    assert marks(tmp_path, 'fit_end')['rank0'][-1] == '32'  # the original max_duration: 2 epochs of 16 batches
    _assert_same_weights(reference_weights, tmp_path / 'weights_resumed.pt')


def test_the_preemption_names_are_still_importable_from_signal_handling():
    """Releases before 0.32.1+signals.5 had them in ``composer.utils.signal_handling``: they stay importable there."""
    from composer.utils import preemption
    # The old import path: the names are set there at run time, which a type checker cannot see.
    from composer.utils.signal_handling import StopRequest, handle_preemption  # pyright: ignore

    assert StopRequest is preemption.StopRequest and handle_preemption is preemption.handle_preemption
    import composer.utils.signal_handling as signal_handling
    assert all(getattr(signal_handling, name) is getattr(preemption, name) for name in preemption.__all__)


def test_request_stop_from_another_thread_returns_with_a_checkpoint(run_scenario, marks, checkpoints, tmp_path):
    scenario = run_scenario(MODULE, 'request_stop_from_another_thread')
    assert scenario.returncode == 0, scenario
    assert scenario.results == {'stopped_at': 4, 'max_duration': '2ep', 'finished_at': 32, 'closed': False}
    assert marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'ep2-ba32-rank0.pt', 'latest-rank0.pt']


def test_request_stop_without_save_folder_says_no_checkpoint(run_scenario):
    scenario = run_scenario(MODULE, 'request_stop_without_save_folder')
    assert scenario.returncode == 0, scenario
    assert scenario.results['batch'] == 0
    assert len(scenario.results['messages']) == 1
    assert 'save_folder' in scenario.results['messages'][0]


def test_composer_launcher_sigterm_to_one_rank_stops_every_rank_at_the_same_batch(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    composer_launcher,
    rank_logs,
    both_ranks_stopped_at_one_batch_and_checkpointed_it,
    tmp_path,
):
    """Only rank 1's process gets SIGTERM; both ranks stop after the same batch, checkpoint it and exit 143."""
    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'probe': {
                'announce_at': 3,
                'pause': 0.2,
            },
            'trainer_kwargs': PREEMPTIBLE,
        },
        launcher=composer_launcher(),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    rank1_pid = int((tmp_path / 'training.rank1').read_text())
    os.kill(rank1_pid, signal.SIGTERM)
    _, err = finish(proc)
    logs = rank_logs() + err
    assert proc.returncode == 143, logs
    both_ranks_stopped_at_one_batch_and_checkpointed_it(logs)
    assert marks(tmp_path, 'close') == {'rank0': [''], 'rank1': ['']}, logs  # once per rank
    assert marks(tmp_path, 'post_close') == {'rank0': [''], 'rank1': ['']}, logs

    # Resuming on two ranks gives the weights of an uninterrupted two-rank run.
    resumed = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'trainer_kwargs': {
                'load_path': 'checkpoints/latest-rank0.pt',
            },
            'tag': 'resumed',
        },
        launcher=composer_launcher(),
    )
    _, err = finish(resumed, timeout=240)
    assert resumed.returncode == 0, rank_logs() + err
    reference = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'trainer_kwargs': {
                'save_folder': None,
            },
            'tag': 'reference',
        },
        launcher=composer_launcher(),
    )
    _, err = finish(reference, timeout=240)
    assert reference.returncode == 0, rank_logs() + err
    _assert_same_weights(tmp_path / 'weights_reference.pt', tmp_path / 'weights_resumed.pt')


def test_torchrun_agent_sigterm_stops_every_rank_at_the_same_batch(
    start_scenario,
    wait_for_files,
    finish,
    torchrun,
    both_ranks_stopped_at_one_batch_and_checkpointed_it,
    tmp_path,
):
    """SIGTERM to the torchrun agent, which forwards it to its workers: all stop at one batch, checkpoint, exit 143."""
    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'probe': {
                'announce_at': 3,
                'pause': 0.2,
            },
            'trainer_kwargs': PREEMPTIBLE,
        },
        launcher=torchrun(),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode != 0  # torchrun reports its own SignalException
    both_ranks_stopped_at_one_batch_and_checkpointed_it(err)


@pytest.mark.parametrize(
    'second,blocked_in',
    [
        (signal.SIGTERM, 'sleep'),
        (signal.SIGINT, 'sleep'),
        (signal.SIGTERM, 'join'),
    ],
)
def test_second_signal_during_a_blocking_close_after_a_preemption_save_ends_the_process_at_once(
    second_signal_during_a_blocking_close,
    checkpoints,
    tmp_path,
    second,
    blocked_in,
):
    """As the lifecycle's test_close.py, with save_on_preemption: the checkpoint of the stop is there."""
    second_signal_during_a_blocking_close(second, blocked_in, PREEMPTIBLE)
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt']


@pytest.mark.parametrize('moment', ['before fit', 'after fit'])
def test_sigterm_outside_fit_exits_143_promptly(start_scenario, wait_for_files, finish, checkpoints, tmp_path, moment):
    proc = start_scenario(MODULE, 'sigterm_outside_fit', {'after_fit': moment == 'after fit'})
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 30
    expected = ['ep0-ba2-rank0.pt', 'latest-rank0.pt'] if moment == 'after fit' else []
    assert checkpoints(tmp_path / 'checkpoints') == expected  # nothing saved by the signal itself


def test_sigint_keeps_raising_keyboard_interrupt_with_save_on_preemption(
    start_scenario,
    wait_for_files,
    finish,
    checkpoints,
    tmp_path,
):
    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {
            'probe': {
                'announce_at': 3,
                'pause': 3,
            },
            'trainer_kwargs': PREEMPTIBLE,
        },
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc)
    assert 'KeyboardInterrupt' in err
    assert proc.returncode != 0
    assert checkpoints(tmp_path / 'checkpoints') == []


def test_save_on_preemption_argument_is_validated_at_construction(run_scenario):
    scenario = run_scenario(MODULE, 'save_on_preemption_is_validated')
    assert scenario.returncode == 0, scenario
    results = scenario.results
    assert results['no save_folder'].startswith('ValueError: save_on_preemption=True')
    assert 'save_folder' in results['no save_folder']
    assert results['a CheckpointSaver callback'] == 'ok'
    assert results['not a bool'].startswith("TypeError: save_on_preemption must be True, False or None, but got 'yes'")
    assert results['an int'].startswith('TypeError: save_on_preemption must be True, False or None, but got 1')


def test_stop_votes_add_no_collective(run_scenario):
    """The votes travel in the all-reduce of samples and tokens: the same collectives with and without the feature."""
    scenario = run_scenario(MODULE, 'count_collectives_with_and_without_stop_votes')
    assert scenario.returncode == 0, scenario
    without, with_feature = scenario.results['False'], scenario.results['True']
    assert without == with_feature, scenario.results
    assert without['all_reduce'] >= 6  # counted: at least the samples-and-tokens all-reduce of each of the 6 batches


@pytest.mark.parametrize('start', ['os.fork', 'multiprocessing'])
def test_a_forked_child_of_a_preemptible_fit_gets_the_os_default_not_the_parents_shutdown(
    sigterm_to_a_forked_child,
    marks,
    checkpoints,
    tmp_path,
    start,
):
    """A child forked during a preemptible fit only inherited the handlers: SIGTERM kills it as by default; no close,
    checkpoint or stop in the child. (``os.fork`` and ``multiprocessing``'s ``fork`` context.)"""
    proc, err = sigterm_to_a_forked_child(
        'fork_during_fit',
        {
            'start': start,
            'trainer_kwargs': PREEMPTIBLE,
        },
        pid_marker='child.rank0',
    )
    assert proc.returncode == 0, err
    assert marks(tmp_path, 'child_status') == {'rank0': [str(-signal.SIGTERM)]}, err  # killed by the signal
    # The parent trained to the end undisturbed; the child closed nothing and saved nothing.
    assert marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert marks(tmp_path, 'close') == {'rank0': ['']}  # only the parent's close
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'latest-rank0.pt']


@pytest.mark.parametrize('start,parent_trainer', [('multiprocessing', False), ('os.fork', True)])
def test_a_forked_child_with_its_own_preemptible_trainer_checkpoints_and_exits_143(
    sigterm_to_a_forked_child,
    marks,
    checkpoints,
    tmp_path,
    start,
    parent_trainer,
):
    """As the lifecycle's test_fork.py, with save_on_preemption in the child: it also checkpoints the stop."""
    proc, err = sigterm_to_a_forked_child(
        'forked_child_with_its_own_trainer',
        {
            'start': start,
            'parent_trainer': parent_trainer,
            'child_kwargs': PREEMPTIBLE,
        },
        pid_marker='child/training.rank0',
    )
    assert proc.returncode == 0, err
    assert marks(tmp_path, 'child_status') == {'rank0': ['143']}, err
    assert marks(tmp_path / 'child', 'exit') == {'rank0': ['143']}, err
    assert marks(tmp_path / 'child', 'close') == {'rank0': ['']}, err  # the child's own engine closed cleanly
    assert marks(tmp_path / 'child', 'post_close') == {'rank0': ['']}, err
    assert checkpoints(tmp_path / 'child' / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt']


def test_dataloader_workers_survive_a_job_wide_sigterm_so_the_batch_is_saved(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    checkpoints,
    tmp_path,
):
    """SLURM signals every process of a job: the workers (num_workers=2) keep serving until the parent stops."""
    import psutil
    proc = start_scenario(MODULE, 'dataloader_workers_during_a_job_wide_sigterm')
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2, workers
    for process in [psutil.Process(proc.pid), *workers]:  # the whole job at once, parent first
        process.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 143, err
    assert 'DataLoader worker' not in err, err
    assert marks(tmp_path, 'exit') == {'rank0': ['143']}
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt'], err
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], alive  # no worker outlives the job


def test_composer_save_on_preemption_turns_it_on_without_code(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    checkpoints,
    tmp_path,
):
    """For frameworks that build the Trainer themselves (LLM Foundry): one variable in the job spec."""
    proc = start_scenario(
        MODULE,
        'fit_with_probe',
        {'probe': {
            'announce_at': 3,
            'pause': 3,
        }},
        env={'COMPOSER_SAVE_ON_PREEMPTION': '1'},
    )
    wait_for_files(str(tmp_path / 'training.rank0'), 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 143, err
    assert marks(tmp_path, 'exit') == {'rank0': ['143']}, err
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba3-rank0.pt', 'latest-rank0.pt'], err


def test_composer_save_on_preemption_reaches_a_trainer_without_save_folder_as_one_warning(run_scenario):
    """An evaluation-only Trainer in the same job runs on, without preemption saving, after one warning."""
    scenario = run_scenario(
        MODULE,
        'fit_without_save_folder',
        env={'COMPOSER_SAVE_ON_PREEMPTION': 'yes'},
    )
    assert scenario.returncode == 0, scenario
    assert scenario.results['batch'] == 2
    assert len(scenario.results['warnings']) == 1, scenario.results
    assert 'COMPOSER_SAVE_ON_PREEMPTION' in scenario.results['warnings'][0]
    assert 'save_folder' in scenario.results['warnings'][0]
