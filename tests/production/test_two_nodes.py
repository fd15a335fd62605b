# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Two ``composer`` launchers as two nodes of one job, one rank each, on this machine (a shared filesystem).

A scheduler preempts one node: only node 1's launcher gets ``SIGTERM`` (it passes it to its rank). With
``save_on_preemption=True`` the ranks of both nodes stop after the same batch, one checkpoint of that batch is
written (by global rank 0, on node 0), and both launchers exit 143. Both nodes started again with ``load_path`` end
with the weights, bit for bit, of an uninterrupted two-rank run (``composer -n 2``: the same ranks, so the same split
of the data, as two one-rank nodes).

``autoresume=True`` does not work on two nodes that share a filesystem, on upstream 0.32.1 as on the fork: Composer
broadcasts node 0's name for the autoresume signal file (``._signal_file_node0_<random>``, next to the checkpoints),
every node's local rank 0 writes and then removes that same file, and the second remover fails with
``FileNotFoundError`` while the Trainer is created (llm-foundry issue #1736). Nodes with their own disks are not
affected. The last test checks that limitation (it xfails while the clash is there, and passes once it is fixed); it
costs two more launcher starts, so it runs only with ``COMPOSER_FORK_FULL=1``.

The scenario is ``scenarios/launcher_scenarios.py``; the reference run and the helpers are shared with
``test_torchrun_restart.py`` (loaded by path: the tests run with --import-mode=importlib).
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from checks import assert_same_weights, checkpoint_batch  # this folder (conftest.py puts it on sys.path)
from test_torchrun_restart import BIN, SCENARIO, _free_port, _wait, reference_weights  # noqa: F401  (a fixture)


def node_command(node_rank: int, port: int, logs: Path) -> list[str]:
    """The ``composer`` launcher of node ``node_rank`` of two, one rank each (the recipe that the tests prove)."""
    return [
        str(BIN / 'composer'),
        '--world_size',
        '2',
        '-n',
        '1',
        '--node_rank',
        str(node_rank),
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(port),
        '--stdout',
        str(logs / 'rank{rank}.stdout'),
        '--stderr',
        str(logs / 'rank{rank}.stderr'),
    ]


@pytest.fixture
def two_nodes(start_scenario, tmp_path):
    """``two_nodes(args)``: start ``fit_preemptible(**args)`` on nodes 0 and 1 (one master port); their launchers."""

    def start(args: dict) -> list[subprocess.Popen]:
        port = _free_port()
        return [
            start_scenario(SCENARIO, 'fit_preemptible', args, launcher=node_command(node, port, tmp_path))
            for node in (0, 1)
        ]

    return start


def _finish_both(nodes: list[subprocess.Popen], rank_logs, timeout: float = 240) -> tuple[list[int], str]:
    """Both launchers' exit codes and all output; fails if one does not exit within ``timeout`` s."""
    results = [_wait(node, timeout) for node in nodes]
    logs = '\n'.join(f'node {n}: returncode={code}\n{out}\n{err}' for n, (code, out, err) in enumerate(results))
    logs = f'{logs}\n{rank_logs()}'
    assert all(code is not None for code, _, _ in results), f'a launcher did not exit in {timeout} s\n{logs}'
    return [code for code, _, _ in results], logs


@pytest.mark.timeout(480)
def test_sigterm_to_one_node_stops_both_at_one_batch_and_the_resume_is_bit_identical(
    two_nodes,
    wait_for_files,
    marks,
    checkpoints,
    rank_logs,
    tmp_path,
    reference_weights,
):
    preemptible = {'save_on_preemption': True, 'run_name': 'job'}
    nodes = two_nodes({'tag': 'stopped', 'hold_at': 3, 'trainer_kwargs': preemptible})
    # Both ranks hold at the end of batch 3 until the signal has reached rank 1 (the scenario's hold).
    wait_for_files(str(tmp_path / 'training.rank*'), 2, nodes[1], timeout=240)
    nodes[1].send_signal(signal.SIGTERM)  # node 1's launcher only, as a scheduler preempting that node
    codes, logs = _finish_both(nodes, rank_logs)
    assert codes == [143, 143], logs
    stopped = marks(tmp_path, 'fit_end')
    assert stopped['rank0'] == stopped['rank1'], logs  # the same batch on both nodes
    batch = int(stopped['rank0'][0])
    assert 3 <= batch < 16, logs  # the hold was at the end of batch 3; 16 batches per rank in all
    assert marks(tmp_path, 'exit') == {'rank0': ['143'], 'rank1': ['143']}, logs
    assert checkpoints(tmp_path / 'checkpoints') == [f'ep0-ba{batch}-rank0.pt', 'latest-rank0.pt'], logs
    assert checkpoint_batch(tmp_path / 'checkpoints' / 'latest-rank0.pt') == batch
    assert f'Preempted (SIGTERM): training stopped after batch {batch} on every rank' in logs

    resumed = two_nodes({
        'tag': 'resumed',
        'trainer_kwargs': {
            **preemptible,
            'load_path': 'checkpoints/latest-rank0.pt',
        },
    })
    codes, logs = _finish_both(resumed, rank_logs)
    assert codes == [0, 0], logs
    assert marks(tmp_path, 'fit_start') == {'rank0': ['0 -', f'{batch} -'], 'rank1': ['0 -', f'{batch} -']}, logs
    assert marks(tmp_path, 'fit_end') == {'rank0': [str(batch), '16'], 'rank1': [str(batch), '16']}, logs
    assert_same_weights(reference_weights, tmp_path / 'weights_resumed.pt')


@pytest.mark.skipif(os.environ.get('COMPOSER_FORK_FULL') != '1', reason='2 more launcher starts: COMPOSER_FORK_FULL=1')
@pytest.mark.timeout(300)
def test_autoresume_on_two_nodes_sharing_a_filesystem(two_nodes, rank_logs, tmp_path):
    """The known clash of the autoresume signal file on a shared filesystem (see the module docstring)."""
    nodes = two_nodes({
        'tag': 'autoresumed',
        'trainer_kwargs': {
            'autoresume': True,
            'run_name': 'job',
            'max_duration': '2ba',
        },
    })
    codes, logs = _finish_both(nodes, rank_logs)
    if codes != [0, 0] and "FileNotFoundError: [Errno 2] No such file or directory: '" in logs and (
        '/checkpoints/._signal_file_node0_' in logs
    ):
        pytest.xfail(
            'autoresume on two nodes sharing a filesystem: both nodes remove the same signal file '
            '(._signal_file_node0_*, upstream 0.32.1 too; llm-foundry issue #1736)',
        )
    assert codes == [0, 0], logs
    assert (tmp_path / 'weights_autoresumed.pt').exists(), logs
