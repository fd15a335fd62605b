# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Preemption with sharded checkpoints: FSDP2 on 2 CPU (gloo) ranks under the ``composer`` launcher.

``FSDP_VERSION=2`` and ``parallelism_config={'fsdp': {'state_dict_type': 'sharded'}}`` (FSDP1 needs CUDA): each
checkpoint is a folder (``checkpoints/ep0-ba6/``: ``__0_0.distcp``, ``__1_0.distcp``, and ``.metadata`` written last)
and rank 0's ``latest-rank0.pt`` is a symlink to that folder, which ``autoresume`` loads on every rank. A SIGTERM to
one rank during ``fit()`` stops both ranks after the same batch, writes exactly one folder, of that batch, and both
ranks exit 143; resuming gives every rank the same local shards as a run that was never interrupted.

The scenarios are in ``scenarios/sharded_scenarios.py``: ``make_trainer('deterministic')``, 8 batches per epoch per
rank, 2 epochs.
"""

import os
import re
import signal
from pathlib import Path

import pytest
import torch

MODULE = 'sharded_scenarios.py'
FSDP2 = {'FSDP_VERSION': '2'}
PREEMPTIBLE = {'save_on_preemption': True, 'run_name': 'job'}
SHARDS = ['.metadata', '__0_0.distcp', '__1_0.distcp']
#: Every rank holds at the end of this batch until the test, having signalled rank 1, lets them go: the ranks agree
#: on the stop in the all-reduce of the next batch, and stop after it.
HOLD_AT = 3


def _launcher_in(command: list[str], directory: Path) -> list[str]:
    """``command`` (the ``composer`` launcher) writing the ranks' output in ``directory``, and verbose.

    Verbose: the launcher logs which rank it SIGTERMs in its clean-up after the first rank exited.
    """
    command = list(command)
    for option in ('--stdout', '--stderr'):
        index = command.index(option) + 1
        command[index] = str(directory / Path(command[index]).name)
    return [*command, '-v']


def _rank_logs(directory: Path) -> str:
    return '\n'.join(f'{p.name}:\n{p.read_text()}' for p in sorted(directory.glob('rank*.std*')))


def _what_the_launcher_saw(out: str, err: str) -> dict[str, list[str]]:
    """Per rank, what the launcher said about it: its clean-up SIGTERM, crashes and exit codes (for messages)."""
    seen: dict[str, list[str]] = {}
    patterns = (
        r'Killing global rank (\d+) \(PID \d+\) with SIGTERM',
        r'Rank (\d+) crashed with exit code (-?\d+)',
        r'Global rank (\d+) \(PID \d+\) exited with code (-?\d+)',
        r'Rank (\d+) finished successfully',
    )
    for line in (out + '\n' + err).splitlines():
        for pattern in patterns:
            match = re.search(pattern, line)
            if match:
                seen.setdefault(f'rank{match.group(1)}', []).append(line.split(':')[-1].strip())
    return seen


def _checkpoint_batch(folder: Path, scratch: Path) -> int:
    """The batch that a sharded checkpoint holds (read back into one file, as a single process can)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(folder, scratch)
    state = torch.load(scratch, map_location='cpu', weights_only=False)
    return int(state['state']['timestamp']['Timestamp']['batch'])


def _assert_stopped_at_one_batch_with_one_sharded_folder(directory: Path, marks, checkpoints, logs: str) -> int:
    """Both ranks raised SystemExit(143) after the same batch; one complete folder of it, ``latest`` pointing to it."""
    assert marks(directory, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
    stopped = marks(directory, 'fit_end')
    assert stopped['rank0'] == stopped['rank1'], logs  # the same batch on every rank
    batch = int(stopped['rank0'][0])
    assert batch == HOLD_AT + 1, logs  # of 2 epochs of 8 batches per rank
    folder = directory / 'checkpoints'
    assert checkpoints(folder) == [f'ep0-ba{batch}', 'latest-rank0.pt'], logs  # one folder, rank 0's symlink
    assert checkpoints(folder / f'ep0-ba{batch}') == SHARDS, logs  # every rank's shard and the metadata
    assert os.readlink(folder / 'latest-rank0.pt') == f'ep0-ba{batch}'
    assert _checkpoint_batch(folder / 'latest-rank0.pt', directory / 'latest-as-one-file.pt') == batch
    return batch


@pytest.mark.timeout(600)
def test_sigterm_to_one_rank_of_a_sharded_fsdp2_run_saves_one_folder_and_resumes_to_the_same_shards(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    checkpoints,
    composer_launcher,
    tmp_path,
):
    """Only rank 1's process gets SIGTERM; both ranks stop after one batch, write its sharded folder and exit 143.

    Then ``autoresume`` on two ranks continues from that folder to the end: every rank's shards of the parameters
    and of Adam's state equal (``torch.equal``) those of an uninterrupted two-rank sharded run.
    """
    proc = start_scenario(
        MODULE,
        'fit_sharded',
        {
            'hold_at': HOLD_AT,
            'trainer_kwargs': PREEMPTIBLE,
        },
        env=FSDP2,
        launcher=_launcher_in(composer_launcher(), tmp_path),
    )
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)  # both ranks hold after batch 3
    os.kill(int((tmp_path / 'training.rank1').read_text()), signal.SIGTERM)
    (tmp_path / 'go').touch()
    out, err = finish(proc, timeout=180)
    logs = _rank_logs(tmp_path) + out + err
    assert proc.returncode == 143, f'{_what_the_launcher_saw(out, err)}\n{logs}'
    _assert_stopped_at_one_batch_with_one_sharded_folder(tmp_path, marks, checkpoints, logs)
    assert marks(tmp_path, 'close') == {'rank0': [''], 'rank1': ['']}, logs  # once per rank
    assert marks(tmp_path, 'post_close') == {'rank0': [''], 'rank1': ['']}, logs

    # Resume, and meanwhile (in its own folder) run the same two ranks uninterrupted.
    reference_folder = tmp_path / 'reference'
    reference_folder.mkdir()
    resumed = start_scenario(
        MODULE,
        'fit_sharded',
        {
            'trainer_kwargs': {
                'autoresume': True,
                'run_name': 'job',
            },
            'tag': 'resumed',
        },
        env=FSDP2,
        launcher=_launcher_in(composer_launcher(), tmp_path),
    )
    reference = start_scenario(
        MODULE,
        'fit_sharded',
        {
            'trainer_kwargs': {
                'save_folder': None,
            },
            'tag': 'reference',
            'folder': 'reference',
        },
        env=FSDP2,
        launcher=_launcher_in(composer_launcher(), reference_folder),
    )
    out, err = finish(resumed, timeout=300)
    assert resumed.returncode == 0, _rank_logs(tmp_path) + out + err
    # Both ranks started from the folder (not from scratch, which would end with the same shards too) and trained to
    # the original max_duration: 2 epochs of 8 batches.
    resumed_at = str(HOLD_AT + 1)
    assert marks(tmp_path, 'fit_start') == {'rank0': ['0', resumed_at], 'rank1': ['0', resumed_at]}
    assert marks(tmp_path, 'fit_end') == {'rank0': [resumed_at, '16'], 'rank1': [resumed_at, '16']}
    out, err = finish(reference, timeout=300)
    assert reference.returncode == 0, _rank_logs(reference_folder) + out + err
    for rank in ('0', '1'):
        expected = torch.load(reference_folder / f'shards_reference.rank{rank}.pt', weights_only=True)
        got = torch.load(tmp_path / f'shards_resumed.rank{rank}.pt', weights_only=True)
        assert got.keys() == expected.keys()
        assert any(name.startswith('optimizer.') for name in got)  # Adam's moments too, not only the parameters
        different = [name for name in expected if not torch.equal(expected[name], got[name])]
        assert different == [], f'rank {rank}: local shards differ from the uninterrupted run: {different}'


@pytest.mark.timeout(420)
def test_two_sharded_fsdp2_jobs_at_once_each_preempted_through_one_rank_exit_143(
    start_scenario,
    wait_for_files,
    finish,
    marks,
    checkpoints,
    composer_launcher,
    tmp_path,
):
    """Two 2-rank jobs on the same cores, SIGTERM to rank 1 of each: every launcher's status is 143.

    Under load a rank's shutdown is slow: the rank that exits first makes the launcher SIGTERM the other one (its
    clean-up), which may reach that rank late in its own shutdown, after ``fit()`` raised SystemExit(143). The rank
    must still end with 143 (not die by the signal, which the launcher reports as 241).
    """
    jobs = {}
    for name in ('job0', 'job1'):
        directory = tmp_path / name
        directory.mkdir()
        jobs[name] = (
            directory,
            start_scenario(
                MODULE,
                'fit_sharded',
                {
                    'hold_at': HOLD_AT,
                    'trainer_kwargs': PREEMPTIBLE,
                    'folder': name,
                },
                env=FSDP2,
                launcher=_launcher_in(composer_launcher(), directory),
            ),
        )
    for directory, proc in jobs.values():
        wait_for_files(str(directory / 'training.rank*'), 2, proc, timeout=300)
    for directory, proc in jobs.values():
        os.kill(int((directory / 'training.rank1').read_text()), signal.SIGTERM)
        (directory / 'go').touch()
    statuses, failures = {}, []
    for name, (directory, proc) in jobs.items():
        out, err = finish(proc, timeout=180)
        logs = _rank_logs(directory) + out + err
        # Whatever the launcher's status, both ranks stopped after the same batch and its folder is complete.
        _assert_stopped_at_one_batch_with_one_sharded_folder(directory, marks, checkpoints, logs)
        statuses[name] = proc.returncode
        if proc.returncode != 143:
            failures.append(
                f'{name}: launcher status {proc.returncode}; per rank, fit() raised SystemExit '
                f'{marks(directory, "exit")}, and the launcher said {_what_the_launcher_saw(out, err)}\n{logs}',
            )
    assert failures == [], f'launcher statuses {statuses}\n' + '\n'.join(failures)
