# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``torchrun --max-restarts``: a preempted worker group is restarted by torchrun and autoresume continues the run.

One worker (not the agent) gets ``SIGTERM`` mid-fit, as from a node-local OOM killer or a scheduler that signals one
process: with ``save_on_preemption=True`` both ranks stop after the same batch, one checkpoint of that batch is
written, both exit 143. torchrun counts 143 as a failure and restarts the workers (c10d rendezvous, which restarts
need; Composer's autoresume needs ``NODE_RANK``, which torchrun does not set). The restarted workers resume from that
batch (``autoresume=True``, fixed ``run_name``) and end with the weights, bit for bit, of an uninterrupted two-rank
run.

Known, and not the fork's: a torchrun restart round often fails in ``init_process_group`` (gloo ``connectFullMesh
failed ... no error``) or hangs there, with plain torch too (upstream 0.32.1 likewise). torch 2.7's torchrun keeps
one TCPStore, the agent's, for every round; likely, a restarted worker reads the gloo address that a dead worker of
the previous round left under the same key. ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a new store per round) made it go
away here (3 restarts of a plain-torch job without a failure, against 3 of 6 rounds failing without it), so the
recipe sets it. The test still allows 4 restarts, bounds every init with ``dist_timeout``, and xfails, with that
reason, only when every restart round failed so; a wrong stop, checkpoint or resume, or different weights, fail.

The scenario is ``scenarios/launcher_scenarios.py``.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from checks import assert_same_weights, checkpoint_batch  # this folder (conftest.py puts it on sys.path)

SCENARIO = str(Path(__file__).resolve().parent / 'scenarios' / 'launcher_scenarios.py')
BIN = Path(sys.executable).parent

#: torchrun restarts the worker group this often. One restart is needed; the others absorb the known gloo failures of
#: a restart round (see the module docstring).
MAX_RESTARTS = 4

#: Seconds that a rank waits in ``init_process_group`` (and any collective) before failing: a round that hangs there
#: fails and is restarted instead of using up the test's time.
DIST_TIMEOUT = 45

#: The known failure of a restart round on this kind of machine (gloo's full-mesh connect), not the fork's.
GLOO_FAILURE = 'connectFullMesh'

#: The environment of the recipe: Composer's autoresume reads ``NODE_RANK`` (torchrun sets ``GROUP_RANK`` only); a new
#: rendezvous store per restart round (see the module docstring).
TORCHRUN_ENV = {'NODE_RANK': '0', 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE': '1'}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun_command(port: int, max_restarts: int = MAX_RESTARTS) -> list[str]:
    """The torchrun command line that this test proves (the README's recipe), before the training script."""
    return [
        str(BIN / 'torchrun'),
        '--nproc_per_node=2',
        f'--max-restarts={max_restarts}',
        '--rdzv-backend=c10d',
        f'--rdzv-endpoint=127.0.0.1:{port}',
    ]


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for process in [*children]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[Optional[int], str, str]:
    """``proc``'s exit code (``None`` if it had to be killed after ``timeout`` s), stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        out, err = proc.communicate(timeout=30)
        return None, out, err


def two_rank_reference(tmp_path_factory) -> Path:
    """Final weights of the same run on two ranks (``composer -n 2``), never interrupted: made once per session.

    ``test_two_nodes.py`` uses it too; the file in the session's base temporary directory is the cache.
    """
    directory = tmp_path_factory.getbasetemp() / 'two_rank_reference'
    weights = directory / 'weights_reference.pt'
    if weights.exists():
        return weights
    directory.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            str(BIN / 'composer'),
            '-n',
            '2',
            '--master_addr',
            '127.0.0.1',
            '--master_port',
            str(_free_port()),
            SCENARIO,
            'fit_preemptible',
            '{"tag": "reference", "trainer_kwargs": {"save_folder": null}}',
        ],
        cwd=directory,
        env=dict(os.environ, PYTHONUNBUFFERED='1'),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc
    return weights


@pytest.fixture
def reference_weights(tmp_path_factory) -> Path:
    """See :func:`two_rank_reference`."""
    return two_rank_reference(tmp_path_factory)


@pytest.mark.timeout(900)
def test_torchrun_restarts_a_preempted_group_and_autoresume_ends_bit_identical(
    start_scenario,
    wait_for_files,
    marks,
    checkpoints,
    tmp_path,
    reference_weights,
):
    proc = start_scenario(
        SCENARIO,
        'fit_preemptible',
        {
            'tag': 'resumed',
            'hold_at': 3,
            'trainer_kwargs': {
                'save_on_preemption': True,
                'autoresume': True,
                'run_name': 'job',
                'dist_timeout': DIST_TIMEOUT,
            },
        },
        env={
            **TORCHRUN_ENV,
            'LOGLEVEL': 'INFO',  # torchrun's agent logs its restarts
        },
        launcher=torchrun_command(_free_port()),
    )
    # Both ranks hold at the end of batch 3 until the signal has reached rank 1's process (scenario's hold).
    wait_for_files(str(tmp_path / 'training.rank*'), 2, proc, timeout=240)
    os.kill(int((tmp_path / 'training.rank1').read_text()), signal.SIGTERM)
    # One stop round, then up to MAX_RESTARTS rounds that may each wait DIST_TIMEOUT s in a failing init.
    returncode, _, err = _wait(proc, timeout=600)
    logs = f'returncode={returncode}\n{err}'

    # The first round: both ranks stopped after the same batch, checkpointed it (one checkpoint) and exited 143.
    started = marks(tmp_path, 'fit_start')
    assert started['rank0'][0] == started['rank1'][0] == '0 0', logs  # round 0 started at batch 0
    stopped = marks(tmp_path, 'fit_end')
    assert stopped['rank0'][0] == stopped['rank1'][0], logs
    batch = int(stopped['rank0'][0])
    assert 3 <= batch < 16, logs  # the hold was at the end of batch 3; 16 batches per rank in all
    assert err.count(f'Preempted (SIGTERM): training stopped after batch {batch} on every rank') == 2, logs
    exits = marks(tmp_path, 'exit')
    assert exits['rank0'][0] == exits['rank1'][0] == '143', logs
    saved = checkpoints(tmp_path / 'checkpoints')
    assert f'ep0-ba{batch}-rank0.pt' in saved, logs
    assert checkpoint_batch(tmp_path / 'checkpoints' / f'ep0-ba{batch}-rank0.pt') == batch
    # torchrun took the 143 for a failure and restarted the group.
    assert 'will restart worker group' in err, logs

    # The restart rounds that failed before fit(), and why (the scenario marks an exception of Trainer(...)).
    failed = marks(tmp_path, 'init_failed')
    failures = sorted(set(failed.get('rank0', []) + failed.get('rank1', [])))
    failed_rounds = {line.split()[0] for line in failures}
    gloo_rounds = {line.split()[0] for line in failures if GLOO_FAILURE in line}
    print(
        f'torchrun: return code {returncode}; restart rounds failed in Trainer(): {sorted(failed_rounds)}, '
        f'with gloo {GLOO_FAILURE}: {sorted(gloo_rounds)}',
    )
    if returncode != 0 and len(started['rank0']) == 1:
        # No restart round reached fit(): xfail only if each of them failed for the known gloo reason.
        if gloo_rounds == failed_rounds == {str(round_) for round_ in range(1, MAX_RESTARTS + 1)}:
            pytest.xfail(
                f'all {MAX_RESTARTS} torchrun restart rounds failed in init_process_group (gloo {GLOO_FAILURE}): '
                'known on this machine, upstream 0.32.1 too',
            )
        pytest.fail(f'no restart round reached fit(), and not only for the known gloo failure\n{failures}\n{logs}')
    assert failed_rounds == gloo_rounds, f'a restart round failed for another reason than gloo: {failures}\n{logs}'

    # A restarted round resumed from that batch and trained to the end.
    assert returncode == 0, logs
    assert len(started['rank0']) == len(started['rank1']) == 2, logs  # only one round after the stop reached fit()
    assert started['rank0'][1].split()[0] == started['rank1'][1].split()[0] == str(batch), logs
    assert int(started['rank0'][1].split()[1]) >= 1, logs  # a restart round, not a new job
    assert stopped == {'rank0': [str(batch), '16'], 'rank1': [str(batch), '16']}, logs
    assert exits == {'rank0': ['143', 'returned'], 'rank1': ['143', 'returned']}, logs
    assert checkpoints(tmp_path / 'checkpoints') == [f'ep0-ba{batch}-rank0.pt', 'ep2-ba16-rank0.pt', 'latest-rank0.pt']
    assert_same_weights(reference_weights, tmp_path / 'weights_resumed.pt')
