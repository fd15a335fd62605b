# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The README's SLURM recipe, end to end, on a real one-node SLURM (``slurm_cluster.py``: Debian's 22.05).

Each job is a batch script whose one step is ``srun composer -n 2 --master_addr 127.0.0.1 --master_port <free>
--cleanup_timeout 80 scenarios/slurm_scenarios.py fit ...`` (``--cleanup_timeout``, the grace period less a margin,
where the installed launcher has it): the installed fork's ``composer`` launcher with two CPU ranks (gloo), training
``make_trainer('deterministic')`` on 256 samples (32 batches per rank and epoch, two epochs: 64 batches) with
``save_on_preemption=True``, ``autoresume=True``, a fixed ``run_name`` and a ``save_folder`` in the test's folder. The
batch script records ``srun``'s exit status in ``srun_status``. A job that is to be preempted sleeps 1 s after each
batch (no effect on the weights), so that it is still training when its signal comes.

* ``#SBATCH --signal=TERM@90``: SLURM sends SIGTERM to the job step 90 s before the time limit. Both ranks stop after
  the same batch, exactly one checkpoint (of that batch) and the ``latest`` symlink are written, ``srun`` and the job
  exit with 143 (``FAILED``, not ``TIMEOUT``); the same script, chained with ``--dependency=afternotok:<job>``, resumes
  from that batch and ends with the weights, bit for bit, of an uninterrupted two-rank run.
* ``scancel --signal=TERM <job>`` (an administrator's preemption): SIGTERM to the job's steps only, not to the batch
  shell (that would be ``--full`` or ``--batch``), so the shell sees ``srun`` exit: the same stop, checkpoint and 143.
* ``scancel <job>``: SIGTERM to every step and to the batch shell, SIGKILL ``KillWait`` (30 s) later: the ranks
  checkpoint the stop batch within it and exit 143; the chained job resumes from it to the same weights.

SLURM's time limit has minute granularity and slurmctld checks limits and ``--signal`` every 30 s, sending the signal
up to 30 s before it falls due, while a job's start-up on this loaded machine (torch imported by three processes on
two cores) takes from 10 s to two minutes. So the ``--signal`` job is submitted with ``--time=10``, and once both
ranks train the test brings the limit forward with ``scontrol update JobId=<job> TimeLimit=<minutes>`` so that the
signal is due now and the limit itself is more than 30 s away: slurmctld's next check sends the ``--signal`` SIGTERM.
The three preempted jobs (and the two chained ones) are submitted together, since start-up takes most of the
time, and each is preempted as soon as both of its ranks train; the uninterrupted reference run starts afterwards.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import slurm_cluster as _slurm
from checks import assert_same_weights, checkpoint_batch  # this folder (conftest.py puts it on sys.path)
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

SCENARIO = Path(__file__).resolve().parent / 'scenarios' / 'slurm_scenarios.py'
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')

#: The batches of a whole run: two epochs of 32 batches per rank.
BATCHES = 64

#: The preemptible, resumable run of the recipe (plus its ``save_folder``).
RUN = {'save_on_preemption': True, 'autoresume': True, 'run_name': 'slurm-job'}

#: ``#SBATCH --signal=TERM@<GRACE>``: SIGTERM that many seconds before the time limit.
GRACE = 90

#: Seconds each batch of a job that is to be preempted sleeps: 64 s of training at least (the signal comes within 30 s).
SLOW = 1.0

#: Bounds (s) of a job's start-up to its first batch and of a whole job, on this loaded machine.
START_TIMEOUT = 300
JOB_TIMEOUT = 300

_ACTIVE = ('PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED')


def _submit(cluster: SlurmCluster, directory: Path, sbatch: list[str], fit: dict[str, Any]) -> int:
    """Submit the batch script ``<sbatch lines>`` + ``srun composer -n 2 ... fit <fit>``, run in ``directory``."""
    directory.mkdir()
    launcher = [
        COMPOSER,
        '-n',
        '2',
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(_slurm._free_port()),
        '--cleanup_timeout',
        str(GRACE - 10),
        '--stdout',
        str(directory / 'rank{rank}.stdout'),  # local rank 0 writes to the job's output
        '--stderr',
        str(directory / 'rank{rank}.stderr'),
    ]
    lines = [
        '#!/bin/bash',
        f'#SBATCH --job-name={directory.name}',
        f'#SBATCH --output={directory / "job.out"}',
        f'#SBATCH --chdir={directory}',
        '#SBATCH --ntasks=1',
        *(f'#SBATCH {option}' for option in sbatch),
        f'srun {shlex.join([*launcher, str(SCENARIO), "fit", json.dumps(fit)])}',
        'status=$?',
        'echo "$status" > srun_status',
        'exit "$status"',
    ]
    script = directory / 'job.sh'
    script.write_text('\n'.join(lines) + '\n')
    return cluster.sbatch(script)


def _logs(cluster: SlurmCluster, directory: Path) -> str:
    """The job's output (rank 0 and the launcher), rank 1's and the daemons' logs: for failure messages."""
    parts = [f'--- {p.name} ---\n{p.read_text(errors="replace")}' for p in sorted(directory.glob('*.std*'))]
    if (directory / 'job.out').exists():
        parts.insert(0, f'--- job.out ---\n{(directory / "job.out").read_text(errors="replace")}')
    return '\n'.join(parts) + '\n' + cluster.logs()


def _seconds(duration: str) -> int:
    """``[days-]hours:minutes:seconds`` (``scontrol``'s ``RunTime``) in seconds."""
    days, _, clock = duration.rpartition('-')
    hours, minutes, seconds = (int(part) for part in clock.split(':'))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def _assert_stopped_at_one_batch_and_checkpointed_it(
    directory: Path,
    save_folder: Path,
    marks: Callable,
    logs: str,
) -> int:
    """Both ranks raised SystemExit(143) after the same batch, the batch in flight, which one checkpoint holds."""
    assert marks(directory, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
    stopped = marks(directory, 'fit_end')
    assert stopped['rank0'] == stopped['rank1'] and len(stopped['rank0']) == 1, logs
    batch = int(stopped['rank0'][0])
    assert batch < BATCHES, logs  # stopped early
    assert {
        rank: values[-1] for rank, values in marks(directory, 'batch').items()
    } == {
        'rank0': str(batch),
        'rank1': str(batch),
    }, logs  # no batch began after it
    found = sorted(p.name for p in save_folder.iterdir())
    assert len(found) == 2 and re.fullmatch(rf'ep\d+-ba{batch}-rank0\.pt', found[0]), (found, logs)
    assert found[1] == 'latest-rank0.pt' and os.readlink(save_folder / 'latest-rank0.pt') == found[0], (found, logs)
    assert checkpoint_batch(save_folder / found[0]) == batch, logs
    return batch


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Any:
    """``reference()``: the final weights of the same two-rank run, never interrupted (outside SLURM).

    It starts when the first resumption test asks for it, once the preempted jobs have ended: not while they save
    (on two loaded cores, three more processes starting up could make the ranks miss the launcher's clean-up timeout).
    """
    directory = tmp_path_factory.mktemp('reference')
    command = [
        COMPOSER,
        '-n',
        '2',
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(_slurm._free_port()),
        str(SCENARIO),
        'fit',
        json.dumps({
            'trainer_kwargs': {
                'save_folder': None,
            },
            'tag': 'reference',
        }),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('COMPOSER_SIGNAL_HANDLING', None)
    proc = subprocess.Popen(
        command,
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def weights() -> Path:
        try:
            out, _ = proc.communicate(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f'the reference run did not end within {JOB_TIMEOUT} s\n{out}')
        assert proc.returncode == 0, out
        return directory / 'weights_reference.pt'

    yield weights
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


class PreemptibleJob:
    """A submitted job of the recipe's run, slowed down (:data:`SLOW`), that :meth:`preempt` preempts.

    Args:
        cluster: the cluster.
        root: its folder: the job runs in ``root / 'first'`` and saves to ``root / 'checkpoints'``.
        how: ``'time_limit'`` (``#SBATCH --signal=TERM@<GRACE>``, its limit brought forward), ``'scancel_signal'``
            (``scancel --signal=TERM``) or ``'scancel'``.
        resubmit: whether the same job, without the slow batches, is chained to it (in ``root / 'resumed'``, with
            ``--dependency=afternotok:<job>``, as the README suggests): it starts when the first job has failed.
    """

    def __init__(self, cluster: SlurmCluster, root: Path, how: str, resubmit: bool):
        self.cluster = cluster
        self.how = how
        self.root = root
        self.directory = root / 'first'
        self.save_folder = root / 'checkpoints'
        run = {**RUN, 'save_folder': str(self.save_folder)}
        sbatch = ['--time=10', f'--signal=TERM@{GRACE}'] if how == 'time_limit' else ['--time=10']
        self.id = _submit(cluster, self.directory, sbatch, {'seconds_per_batch': SLOW, 'trainer_kwargs': run})
        self.resumed = _submit(
            cluster,
            root / 'resumed',
            ['--time=10', f'--dependency=afternotok:{self.id}'],
            {
                'trainer_kwargs': run,
                'tag': 'resumed',
            },
        ) if resubmit else None
        #: When (``time.time()``) :meth:`preempt` acted, and why the job could not be preempted.
        self.preempted_at: Optional[float] = None
        self.error: Optional[str] = None
        #: The batch the first job stopped after, once its test has checked it.
        self.stopped_at: Optional[int] = None

    def trains(self) -> bool:
        """Whether both ranks have finished a batch."""
        found = _marks(self.directory, 'batch')
        return len(found) == 2 and all(found.values())

    def preempt(self) -> None:
        """Preempt the job (it trains), as :attr:`how` says."""
        if self.how == 'time_limit':
            # The limit such that the signal is due (end - GRACE <= now) and the limit is more than 30 s away: the
            # next check of slurmctld (every 30 s) sends the signal (see the module's docstring).
            minutes = (_seconds(self.cluster.job(self.id)['RunTime']) + GRACE) // 60
            command = ['scontrol', 'update', f'JobId={self.id}', f'TimeLimit={minutes}']
        elif self.how == 'scancel_signal':
            command = ['scancel', '--signal=TERM', str(self.id)]
        else:
            command = ['scancel', str(self.id)]
        self.preempted_at = time.time()
        self.cluster.run(command)


def _marks(directory: Path, name: str) -> dict[str, list[str]]:
    """What the ranks marked (``marks`` of the signal tests' conftest, usable in a module fixture)."""
    return {p.name.rsplit('.', 1)[1]: p.read_text().split('\n')[:-1] for p in sorted(directory.glob(f'{name}.rank*'))}


@pytest.fixture(scope='module')
def preempted_jobs(slurm_cluster, tmp_path_factory) -> dict[str, PreemptibleJob]:
    """The three tests' jobs (and two chained resubmissions), submitted together, each preempted once it trains.

    Start-up takes most of the time, so they start together, and each job is preempted as soon as both of its ranks
    train (they would train for at least 64 x :data:`SLOW` s); the tests then check how each ended.
    """
    jobs = {
        how: PreemptibleJob(slurm_cluster, tmp_path_factory.mktemp(how), how, resubmit)
        for how, resubmit in (('time_limit', True), ('scancel_signal', False), ('scancel', True))
    }
    waiting = list(jobs.values())
    deadline = time.monotonic() + START_TIMEOUT
    while waiting:
        for job in list(waiting):
            state = slurm_cluster.job(job.id).get('JobState')
            if job.trains():
                job.preempt()
            elif state not in _ACTIVE:
                job.error = f'job {job.id} ended ({state}) before both ranks trained'
            elif time.monotonic() > deadline:
                job.error = f'job {job.id} did not train within {START_TIMEOUT} s'
            else:
                continue
            waiting.remove(job)
        time.sleep(0.5)
    return jobs


def _preempted(jobs: dict[str, PreemptibleJob], how: str) -> tuple[PreemptibleJob, dict[str, str], str]:
    """The job preempted ``how``, once it has ended; its ``scontrol`` fields and logs."""
    job = jobs[how]
    if job.error:
        pytest.fail(f'{job.error}\n{_logs(job.cluster, job.directory)}')
    info = job.cluster.wait_for_job(job.id, JOB_TIMEOUT)
    return job, info, _logs(job.cluster, job.directory)


@pytest.mark.timeout(600)
def test_signal_before_the_time_limit_checkpoints_the_batch_in_flight_and_exits_143(preempted_jobs, marks):
    job, info, logs = _preempted(preempted_jobs, 'time_limit')
    # Ended by the step's exit status, before the time limit (that would be TIMEOUT).
    assert (info['JobState'], info['ExitCode']) == ('FAILED', '143:0'), (info, logs)
    assert (job.directory / 'srun_status').read_text() == '143\n', logs
    job.stopped_at = _assert_stopped_at_one_batch_and_checkpointed_it(job.directory, job.save_folder, marks, logs)


@pytest.mark.timeout(600)
def test_scancel_signal_term_checkpoints_the_batch_in_flight_and_exits_143(preempted_jobs, marks):
    job, info, logs = _preempted(preempted_jobs, 'scancel_signal')
    # Only the step got the signal: the batch shell lived on to record srun's status and exit with it.
    assert (job.directory / 'srun_status').read_text() == '143\n', logs
    assert (info['JobState'], info['ExitCode']) == ('FAILED', '143:0'), (info, logs)
    job.stopped_at = _assert_stopped_at_one_batch_and_checkpointed_it(job.directory, job.save_folder, marks, logs)


@pytest.mark.timeout(600)
def test_scancel_leaves_the_checkpoint_of_the_batch_in_flight_within_kill_wait(preempted_jobs, marks):
    job, info, logs = _preempted(preempted_jobs, 'scancel')
    assert info['JobState'] == 'CANCELLED', (info, logs)
    # The batch shell got SIGTERM too and died of it: no srun_status.
    assert not (job.directory / 'srun_status').exists(), logs
    job.stopped_at = _assert_stopped_at_one_batch_and_checkpointed_it(job.directory, job.save_folder, marks, logs)
    # Both ranks raised SystemExit(143) (not SIGKILL's -9) after their checkpoint, within KillWait.
    assert job.preempted_at is not None
    exited = max(path.stat().st_mtime for path in job.directory.glob('exit.rank*')) - job.preempted_at
    assert exited < _slurm.KILL_WAIT, (exited, logs)


@pytest.mark.timeout(600)
@pytest.mark.parametrize('how', ['time_limit', 'scancel'])
def test_the_chained_job_resumes_from_the_checkpoint_to_the_uninterrupted_weights(
    preempted_jobs,
    reference,
    marks,
    how,
):
    """The job chained with ``--dependency=afternotok`` ran when the first failed (or was cancelled) and resumed."""
    job = preempted_jobs[how]
    assert job.resumed is not None
    if job.stopped_at is None:
        pytest.skip('the test that checks the preempted first job did not run or failed')
    directory = job.root / 'resumed'
    info = job.cluster.wait_for_job(job.resumed, JOB_TIMEOUT)
    logs = _logs(job.cluster, directory)
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), (info, logs)
    assert marks(directory, 'batch')['rank0'][0] == str(job.stopped_at + 1), logs  # resumed, not started over
    assert marks(directory, 'fit_end') == {'rank0': [str(BATCHES)], 'rank1': [str(BATCHES)]}, logs
    assert_same_weights(reference(), directory / 'weights_resumed.pt')
