# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Autoresume when ``latest-rank0.pt`` is missing, dangling or points to a checkpoint whose save did not finish.

It resumes from the newest complete checkpoint in the save folder and logs one warning saying which and why; it
starts from scratch only when there is none, and says so. A first run (an empty folder) stays silent.
"""

import logging
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from composer import Trainer
from composer.models import ComposerClassifier

RUN_NAME = 'fallback'


def _trainer(folder: Path, max_duration: str = '8ba', **kwargs) -> Trainer:
    torch.manual_seed(0)
    model = ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2)
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    return Trainer(
        model=model,
        optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
        train_dataloader=DataLoader(data, batch_size=4),
        max_duration=max_duration,
        save_folder=str(folder),
        save_interval='2ba',
        save_num_checkpoints_to_keep=-1,
        run_name=RUN_NAME,
        device='cpu',
        progress_bar=False,
        **kwargs,
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    """A save folder with the checkpoints of batches 2, 4 and 6; ``latest-rank0.pt`` points to batch 6's."""
    folder = tmp_path / 'checkpoints'
    trainer = _trainer(folder, max_duration='6ba')
    trainer.fit()
    trainer.close()
    assert sorted(p.name for p in folder.iterdir()) == [
        'ep0-ba2-rank0.pt',
        'ep0-ba4-rank0.pt',
        'ep0-ba6-rank0.pt',
        'latest-rank0.pt',
    ]
    assert os.readlink(folder / 'latest-rank0.pt') == 'ep0-ba6-rank0.pt'
    return folder


def _autoresume(folder: Path, caplog) -> tuple[int, list[str]]:
    """The batch an autoresuming trainer starts from, and the warnings it logged."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='composer.trainer.trainer'):
        trainer = _trainer(folder, autoresume=True)
    batch = int(trainer.state.timestamp.batch)
    trainer.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == 'composer.trainer.trainer']
    return batch, warnings


def _assert_resumed_with_one_warning(folder: Path, caplog, batch: int, *says: str) -> None:
    """Autoresume starts from ``batch`` and logs exactly one warning, which contains each of ``says``."""
    started_at, warnings = _autoresume(folder, caplog)
    assert started_at == batch
    assert len(warnings) == 1, warnings
    assert [text for text in says if text not in warnings[0]] == [], warnings[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a save killed half-way


def test_a_complete_latest_checkpoint_is_loaded_without_a_warning(folder, caplog):
    assert _autoresume(folder, caplog) == (6, [])


def test_a_first_run_in_an_empty_folder_starts_from_scratch_without_a_warning(tmp_path, caplog):
    assert _autoresume(tmp_path / 'checkpoints', caplog) == (0, [])


def test_a_missing_latest_link_resumes_from_the_newest_complete_checkpoint(folder, caplog):
    os.remove(folder / 'latest-rank0.pt')  # a sync tool or a file system without symlinks, a copied folder
    _assert_resumed_with_one_warning(
        folder,
        caplog,
        6,
        'latest-rank0.pt is missing',
        f'resuming from {folder / "ep0-ba6-rank0.pt"} instead',
    )


def test_a_dangling_latest_link_resumes_from_the_newest_complete_checkpoint(folder, caplog):
    os.remove(folder / 'ep0-ba6-rank0.pt')
    _assert_resumed_with_one_warning(
        folder,
        caplog,
        4,
        'ep0-ba6-rank0.pt, but it does not exist',
        f'resuming from {folder / "ep0-ba4-rank0.pt"} instead',
    )


def test_a_latest_link_to_a_truncated_checkpoint_resumes_from_the_newest_complete_one(folder, caplog):
    _truncate(folder / 'ep0-ba6-rank0.pt')
    _assert_resumed_with_one_warning(
        folder,
        caplog,
        4,
        'its save did not finish',
        f'resuming from {folder / "ep0-ba4-rank0.pt"} instead',
    )


def test_the_newest_checkpoint_is_the_highest_batch_whatever_the_modification_times(folder, caplog):
    os.remove(folder / 'latest-rank0.pt')
    os.utime(folder / 'ep0-ba2-rank0.pt')  # copied last: the newest file, not the newest checkpoint
    assert _autoresume(folder, caplog)[0] == 6


def test_without_a_complete_checkpoint_it_starts_from_scratch_and_says_so(folder, caplog):
    for batch in (2, 4, 6):
        _truncate(folder / f'ep0-ba{batch}-rank0.pt')
    _assert_resumed_with_one_warning(folder, caplog, 0, 'training starts from scratch', 'ep0-ba6-rank0.pt')


def test_files_that_are_not_the_runs_checkpoints_are_never_chosen(folder, caplog):
    os.remove(folder / 'latest-rank0.pt')
    for batch in (2, 4, 6):
        os.remove(folder / f'ep0-ba{batch}-rank0.pt')
    torch.save({'not': 'a checkpoint of this run'}, folder / 'ep0-ba8-rank1.pt')  # another rank's name
    torch.save({'not': 'a checkpoint of this run'}, folder / 'notes.pt')
    assert _autoresume(folder, caplog) == (0, [])
