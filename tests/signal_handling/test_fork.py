# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Forked children, by owner, not "was forked": a child that creates its own Trainer gets the full behaviour; a child
that only inherited the parent's handlers gets the signal's own effect.

The scenarios are in ``scenarios/fork_scenarios.py``.
"""

import signal

import pytest


@pytest.mark.parametrize('start,parent_trainer', [('multiprocessing', False), ('os.fork', True)])
def test_a_forked_child_that_creates_its_own_trainer_gets_the_full_behaviour(
    sigterm_to_a_forked_child,
    marks,
    checkpoints,
    tmp_path,
    start,
    parent_trainer,
):
    """SIGTERM to such a child exits 143 after a clean close."""
    proc, err = sigterm_to_a_forked_child(
        'forked_child_with_its_own_trainer',
        {
            'start': start,
            'parent_trainer': parent_trainer,
        },
        pid_marker='child/training.rank0',
    )
    assert proc.returncode == 0, err
    assert marks(tmp_path, 'child_status') == {'rank0': ['143']}, err
    assert marks(tmp_path / 'child', 'exit') == {'rank0': ['143']}, err
    assert marks(tmp_path / 'child', 'close') == {'rank0': ['']}, err  # the child's own engine closed cleanly
    assert marks(tmp_path / 'child', 'post_close') == {'rank0': ['']}, err
    assert checkpoints(tmp_path / 'child' / 'checkpoints') == []


@pytest.mark.parametrize('start', ['os.fork', 'multiprocessing'])
def test_a_forked_child_of_a_fitting_process_gets_the_os_default_not_the_parents_shutdown(
    sigterm_to_a_forked_child,
    marks,
    checkpoints,
    tmp_path,
    start,
):
    """A child forked during fit only inherited the handlers: SIGTERM kills it as by default; the child closes and
    saves nothing, and the parent trains on. (``os.fork`` and ``multiprocessing``'s ``fork`` context.)"""
    proc, err = sigterm_to_a_forked_child('fork_during_fit', {'start': start}, pid_marker='child.rank0')
    assert proc.returncode == 0, err
    assert marks(tmp_path, 'child_status') == {'rank0': [str(-signal.SIGTERM)]}, err  # killed by the signal
    assert marks(tmp_path, 'exit') == {'rank0': ['returned']}
    assert marks(tmp_path, 'close') == {'rank0': ['']}  # only the parent's close
    assert checkpoints(tmp_path / 'checkpoints') == ['ep0-ba4-rank0.pt', 'latest-rank0.pt']
