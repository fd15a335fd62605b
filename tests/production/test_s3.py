# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption with checkpoints in S3: a real S3 API (moto's server on loopback), Composer's own upload and download.

The runs save to ``save_folder='s3://<bucket>/run'`` with a fixed ``run_name`` and ``autoresume=True``; Composer
finds the endpoint in ``S3_ENDPOINT_URL`` (see ``s3_server.py``). A resumed run starts in another directory, with
an empty local folder: it must find the remote latest pointer (``run/latest-rank0.pt.symlink``, an object that holds
the checkpoint's key), download the checkpoint and resume from it.

* One process, ``SIGTERM`` mid-fit with ``save_on_preemption=True``: exit 143, and by then the bucket holds the
  checkpoint of the stop batch and the pointer naming it, nothing newer; the resumed run ends with the weights, bit
  for bit, of an uninterrupted run.
* Two ranks under the ``composer`` launcher, ``SIGTERM`` to one rank: the same, on both ranks.
* ``SIGKILL`` of the whole process tree while a checkpoint's multipart upload is in flight (a proxy on loopback
  holds its second part): the pointer still names the previous complete checkpoint, which loads, and the resumed run
  starts from it; the interrupted checkpoint is not in the bucket, neither whole nor in part.

The two-rank test starts three two-rank jobs (minutes on a loaded machine): it runs with ``COMPOSER_FORK_FULL=1``.

Runs: ``make_trainer('deterministic')`` (64 samples in batches of 4: 16 batches per epoch in one process, 8 per rank
on two ranks, two epochs). The scenarios are ``scenarios/s3_scenarios.py``.
"""

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from checks import assert_same_weights, checkpoint_batch  # this folder (conftest.py puts it on sys.path)
from s3_server import S3Bucket, moto_server, s3_bucket, stalling_proxy  # noqa: F401  (fixtures)

MODULE = str(Path(__file__).resolve().parent / 'scenarios' / 's3_scenarios.py')

#: The remote latest pointer of rank 0 (``save_folder='s3://<bucket>/run'``).
POINTER = 'run/latest-rank0.pt.symlink'


def _preemptible(bucket: S3Bucket, **kwargs) -> dict:
    """The Trainer arguments of a preemptible run that saves to ``bucket`` (the recipe that the tests prove)."""
    return {
        'save_folder': bucket.uri('run'),
        'run_name': 'job',
        'autoresume': True,
        'save_on_preemption': True,
        **kwargs,
    }


def _assert_bucket_holds_only(bucket: S3Bucket, batch: int, tmp_path: Path, logs: str) -> None:
    """The bucket's run folder: the checkpoint of ``batch`` and the pointer naming it, nothing newer or partial."""
    checkpoint = f'run/ep0-ba{batch}-rank0.pt'
    assert bucket.keys('run/') == [checkpoint, POINTER], logs
    assert bucket.get(POINTER).decode() == checkpoint, logs
    assert bucket.uploads_in_progress() == {}, logs
    assert checkpoint_batch(bucket.download(checkpoint, tmp_path / 'downloaded' / Path(checkpoint).name)) == batch


def _sigkill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it started (its upload workers), as when the node goes away."""
    import psutil
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.communicate(timeout=30)  # reaped by Popen (psutil's wait would reap it first and hide its status)
    psutil.wait_procs(children, timeout=30)


def _logging_to(launcher: list[str], directory: Path) -> list[str]:
    """The ``composer`` launcher command ``launcher`` with the ranks' output in ``directory`` (a second launcher)."""
    directory.mkdir(parents=True, exist_ok=True)
    command = list(launcher)
    for option in ('--stdout', '--stderr'):
        at = command.index(option) + 1
        command[at] = str(directory / Path(command[at]).name)
    return command


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f'exited with {proc.returncode} before {what}\nstdout: {out}\nstderr: {err}')
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f'timed out waiting for {what}\nstdout: {out}\nstderr: {err}')
        time.sleep(0.1)


@pytest.mark.timeout(420)
def test_sigterm_uploads_the_stop_checkpoint_and_an_empty_folder_resumes_bit_identically(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    s3_bucket,
    tmp_path,
):
    run = _preemptible(s3_bucket)
    reference = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'reference',
            'trainer_kwargs': {
                'save_folder': None,
            },
            'workdir': str(tmp_path / 'reference'),
        },
    )
    stopped = start_scenario(MODULE, 'fit_s3', {'hold_at': 10, 'trainer_kwargs': run}, env=s3_bucket.env)
    wait_for_files(str(tmp_path / 'training.rank0'), 1, stopped, timeout=180)
    stopped.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = finish(stopped, timeout=150)
    print(f'SIGTERM to exit: {time.monotonic() - sent:.1f} s')
    assert stopped.returncode == 143, err
    assert marks(tmp_path, 'exit') == {'rank0': ['143']}, err
    assert marks(tmp_path, 'fit_end') == {'rank0': ['10']}, err
    # Right after the exit: the checkpoint of the stop batch and the pointer naming it, nothing newer.
    _assert_bucket_holds_only(s3_bucket, 10, tmp_path, err)

    # A new run in an empty local folder downloads it and resumes after batch 10, to the uninterrupted run's weights.
    resumed = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'resumed',
            'trainer_kwargs': run,
            'workdir': str(tmp_path / 'resumed'),
            'save_at_end': False,
        },
        env=s3_bucket.env,
    )
    _, err = finish(resumed, timeout=150)
    assert resumed.returncode == 0, err
    assert marks(tmp_path / 'resumed', 'fit_start') == {'rank0': ['10']}, err
    assert marks(tmp_path / 'resumed', 'fit_end') == {'rank0': ['32']}, err
    _, reference_err = finish(reference, timeout=150)
    assert reference.returncode == 0, reference_err
    assert_same_weights(tmp_path / 'reference' / 'weights_reference.pt', tmp_path / 'resumed' / 'weights_resumed.pt')


@pytest.mark.skipif(os.environ.get('COMPOSER_FORK_FULL') != '1', reason='three two-rank jobs: COMPOSER_FORK_FULL=1')
@pytest.mark.timeout(900)
def test_composer_launcher_two_ranks_sigterm_to_one_rank_uploads_and_resumes_bit_identically(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    composer_launcher,
    rank_logs,
    s3_bucket,
    tmp_path,
):
    run = _preemptible(s3_bucket)
    stopped = start_scenario(
        MODULE,
        'fit_s3',
        {
            'hold_at': 3,
            'trainer_kwargs': run,
        },
        env=s3_bucket.env,
        launcher=composer_launcher(),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, stopped, timeout=240)
    os.kill(int((tmp_path / 'training.rank1').read_text()), signal.SIGTERM)
    _, err = finish(stopped, timeout=180)
    logs = rank_logs() + err
    assert stopped.returncode == 143, logs
    assert marks(tmp_path, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
    # The same batch on both ranks: the one after the hold, whose all-reduce carried rank 1's stop vote.
    assert marks(tmp_path, 'fit_end') == {'rank0': ['4'], 'rank1': ['4']}, logs
    _assert_bucket_holds_only(s3_bucket, 4, tmp_path, logs)  # rank 0 saves the (unsharded) checkpoint and pointer

    resumed = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'resumed',
            'trainer_kwargs': run,
            'workdir': str(tmp_path / 'resumed'),
            'save_at_end': False,
        },
        env=s3_bucket.env,
        launcher=composer_launcher(),
    )
    reference = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'reference',
            'trainer_kwargs': {
                'save_folder': None,
            },
            'workdir': str(tmp_path / 'reference'),
        },
        launcher=_logging_to(composer_launcher(), tmp_path / 'reference'),
    )
    _, err = finish(resumed, timeout=400)
    assert resumed.returncode == 0, rank_logs() + err
    assert marks(tmp_path / 'resumed', 'fit_start') == {'rank0': ['4'], 'rank1': ['4']}, rank_logs()
    assert marks(tmp_path / 'resumed', 'fit_end') == {'rank0': ['16'], 'rank1': ['16']}, rank_logs()
    _, err = finish(reference, timeout=400)
    assert reference.returncode == 0, err
    assert_same_weights(tmp_path / 'reference' / 'weights_reference.pt', tmp_path / 'resumed' / 'weights_resumed.pt')


#: A model of 1M parameters (with Adam's state a 12.7 MB checkpoint): boto3 uploads it in two parts (8 MB each).
BIG = {'features': 512, 'hidden': 2048}


@pytest.mark.timeout(480)
def test_sigkill_mid_upload_leaves_the_pointer_on_the_previous_complete_checkpoint(
    start_scenario,
    finish,
    marks,
    s3_bucket,
    stalling_proxy,
    tmp_path,
):
    # Composer reaches moto through a proxy that holds the second part of any checkpoint's upload but batch 4's.
    proxy = stalling_proxy(rb'PUT [^ ]*/run/ep\d+-ba(?!4-)\d+-rank0\.pt\?[^ ]*partNumber=2[& ]')
    run = _preemptible(s3_bucket, max_duration='40ep', **BIG)
    killed = start_scenario(
        MODULE,
        'two_saves',
        {
            'bucket': s3_bucket.name,
            'first': 4,
            'trainer_kwargs': run,
            'pointer_check_seconds': 1.0,  # instead of 30 s between looks for batch 4's upload: only the order counts
        },
        env=s3_bucket.through(proxy.endpoint).env,
    )
    _wait_until(proxy.stalled.is_set, killed, 'an upload stalled at the proxy', timeout=240)
    second = int(marks(tmp_path, 'second_save')['rank0'][0])
    uploads = s3_bucket.uploads_in_progress()
    (in_flight,) = uploads.keys()  # the second checkpoint's upload has begun, its second part is held
    assert in_flight.startswith('run/') and in_flight.endswith(f'-ba{second}-rank0.pt'), uploads
    _sigkill_tree(killed)
    assert killed.returncode == -signal.SIGKILL
    proxy.close()

    # The pointer names batch 4's checkpoint, which is whole and loads; the interrupted one is no object.
    assert s3_bucket.keys('run/') == ['run/ep0-ba4-rank0.pt', POINTER]
    assert s3_bucket.get(POINTER).decode() == 'run/ep0-ba4-rank0.pt'
    assert checkpoint_batch(s3_bucket.download('run/ep0-ba4-rank0.pt', tmp_path / 'downloaded' / 'ba4.pt')) == 4
    assert list(s3_bucket.uploads_in_progress()) == [in_flight]  # begun, never completed

    # A new run in an empty local folder resumes from batch 4, to the weights of an uninterrupted run.
    resume = {**run, 'max_duration': '8ba'}
    resumed = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'resumed',
            'trainer_kwargs': resume,
            'workdir': str(tmp_path / 'resumed'),
            'save_at_end': False,
        },
        env=s3_bucket.env,
    )
    reference = start_scenario(
        MODULE,
        'fit_s3',
        {
            'tag': 'reference',
            'trainer_kwargs': {
                'save_folder': None,
                'max_duration': '8ba',
                **BIG,
            },
            'workdir': str(tmp_path / 'reference'),
        },
    )
    _, err = finish(resumed, timeout=180)
    assert resumed.returncode == 0, err
    assert marks(tmp_path / 'resumed', 'fit_start') == {'rank0': ['4']}, err
    assert marks(tmp_path / 'resumed', 'fit_end') == {'rank0': ['8']}, err
    _, err = finish(reference, timeout=180)
    assert reference.returncode == 0, err
    assert_same_weights(tmp_path / 'reference' / 'weights_reference.pt', tmp_path / 'resumed' / 'weights_resumed.pt')
