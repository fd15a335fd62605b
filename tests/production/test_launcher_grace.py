# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The launcher's grace period: a preemption checkpoint longer than 30 s under ``composer --cleanup_timeout``.

Kubernetes' ``terminationGracePeriodSeconds`` and SLURM's ``--signal=TERM@<seconds>`` often give a job minutes; the
launcher used to SIGKILL its ranks 30 s after it was signalled, whatever they allowed. Two ranks with
``save_on_preemption`` whose preemption checkpoint takes 35 s (``scenarios/grace_scenarios.py``): with the default
the write is cut and the previous checkpoint is what autoresume finds; with ``--cleanup_timeout 120`` it lands, the
launcher exits 143 and autoresume continues from it to the weights of an uninterrupted run.
"""

import os
import signal
from pathlib import Path

import pytest
from checks import assert_same_weights, checkpoint_batch  # this folder (conftest.py puts it on sys.path)

SCENARIOS = Path(__file__).resolve().parent / 'scenarios'
MODULE = str(SCENARIOS / 'grace_scenarios.py')
SAVE_SECONDS = 35  # longer than the launcher's default clean-up timeout (30 s)


def _preempt(start_scenario, wait_for_files, finish, composer_launcher, tmp_path, *options: str) -> tuple:
    launcher = composer_launcher()
    proc = start_scenario(
        MODULE,
        'preemptible_fit',
        {'save_seconds': SAVE_SECONDS},
        launcher=[*launcher[:1], *options, *launcher[1:]],
    )
    wait_for_files(str(tmp_path / 'holding.rank*'), 2, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)  # the scheduler preempts the job: its launcher gets SIGTERM
    (tmp_path / 'slow-save').write_text('')
    out, err = finish(proc, timeout=240)
    return proc, out + err


@pytest.mark.timeout(600)
def test_the_default_cleanup_timeout_cuts_a_35_s_checkpoint_and_the_previous_one_stays(
    start_scenario,
    wait_for_files,
    finish,
    composer_launcher,
    rank_logs,
    tmp_path,
):
    proc, output = _preempt(start_scenario, wait_for_files, finish, composer_launcher, tmp_path)
    logs = rank_logs() + output
    assert 'Waiting up to 30 seconds for all training processes to terminate' in output, logs
    assert (tmp_path / 'slow_save_started.rank0').exists(), logs
    assert not (tmp_path / 'slow_save_done.rank0').exists(), logs  # SIGKILLed mid-save
    assert proc.returncode != 143, logs
    checkpoints = tmp_path / 'checkpoints'
    assert sorted(p.name for p in checkpoints.glob('ep*.pt')) == ['ep0-ba2-rank0.pt'], logs
    assert checkpoint_batch(checkpoints / 'latest-rank0.pt') == 2, logs  # what autoresume would find


@pytest.mark.timeout(900)
def test_a_larger_cleanup_timeout_lets_the_35_s_checkpoint_land_and_resume(
    start_scenario,
    wait_for_files,
    finish,
    composer_launcher,
    rank_logs,
    marks,
    tmp_path,
):
    proc, output = _preempt(
        start_scenario,
        wait_for_files,
        finish,
        composer_launcher,
        tmp_path,
        '--cleanup_timeout',
        '120',
    )
    logs = rank_logs() + output
    assert 'Waiting up to 120 seconds for all training processes to terminate' in output, logs
    assert proc.returncode == 143, logs
    stopped = marks(tmp_path, 'fit_end')
    assert stopped['rank0'] == stopped['rank1'] and len(stopped['rank0']) == 1, stopped  # one batch on every rank
    batch = int(stopped['rank0'][0])
    assert batch > 3, logs
    checkpoints = tmp_path / 'checkpoints'
    assert sorted(p.name for p in checkpoints.glob('ep*.pt')) == ['ep0-ba2-rank0.pt', f'ep0-ba{batch}-rank0.pt'], logs
    assert checkpoint_batch(checkpoints / 'latest-rank0.pt') == batch, logs

    os.remove(tmp_path / 'slow-save')
    resumed = start_scenario(
        MODULE,
        'preemptible_fit',
        {
            'save_seconds': 0,
            'tag': 'resumed',
            'autoresume': True,
        },
        launcher=composer_launcher(),
    )
    _, err = finish(resumed, timeout=300)
    assert resumed.returncode == 0, rank_logs() + err
    assert marks(tmp_path, 'fit_end')['rank0'][-1] == '16'
    reference = start_scenario(MODULE, 'uninterrupted_fit', launcher=composer_launcher())
    _, err = finish(reference, timeout=300)
    assert reference.returncode == 0, rank_logs() + err
    assert_same_weights(tmp_path / 'weights_reference.pt', tmp_path / 'weights_resumed.pt')
