# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Autoresume's fallback with sharded checkpoints: FSDP2 on 2 gloo ranks under the ``composer`` launcher.

The latest link points to a folder without ``.metadata`` (a sharded save that did not finish): every rank resumes from
the newest complete folder, rank 0's choice, with the one warning that names it. The scenario is the preemption
tests' ``fit_sharded`` (``tests/signal_handling/scenarios/sharded_scenarios.py``).
"""

import os

import pytest

MODULE = 'sharded_scenarios.py'
RUN = {'run_name': 'sharded', 'save_interval': '2ba', 'save_num_checkpoints_to_keep': -1}
FSDP2 = {'FSDP_VERSION': '2'}


@pytest.mark.timeout(900)
def test_a_latest_link_to_a_folder_without_metadata_resumes_every_rank_from_the_newest_complete_one(
    start_scenario,
    finish,
    marks,
    composer_launcher,
    rank_logs,
    tmp_path,
):
    first = start_scenario(MODULE, 'fit_sharded', {'trainer_kwargs': {**RUN, 'max_duration': '6ba'}}, env=FSDP2,
                           launcher=composer_launcher())  # yapf: disable
    _, err = finish(first, timeout=600)
    assert first.returncode == 0, rank_logs() + err
    checkpoints = tmp_path / 'checkpoints'
    assert os.readlink(checkpoints / 'latest-rank0.pt') == 'ep0-ba6'
    os.remove(checkpoints / 'ep0-ba6' / '.metadata')  # the save of batch 6 did not finish

    resumed = start_scenario(
        MODULE,
        'fit_sharded',
        {
            'trainer_kwargs': {
                **RUN,
                'max_duration': '8ba',
                'autoresume': True,
            },
            'tag': 'resumed',
        },
        env=FSDP2,
        launcher=composer_launcher(),
    )
    _, err = finish(resumed, timeout=600)
    logs = rank_logs() + err
    assert resumed.returncode == 0, logs
    assert marks(tmp_path, 'fit_start') == {'rank0': ['0', '4'], 'rank1': ['0', '4']}, logs
    warning = f'resuming from {checkpoints / "ep0-ba4"} instead, the newest complete checkpoint'
    assert warning in (tmp_path / 'rank1.stderr').read_text(), logs  # every rank logs rank 0's choice
    assert warning in logs
    assert 'ep0-ba6, but it is a sharded checkpoint folder without .metadata' in logs
    assert (checkpoints / 'ep0-ba6' / '.metadata').is_file()  # saved again by the resumed run
