# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGKILL at any moment of a save never leaves autoresume without a complete checkpoint.

Preemption ends with SIGKILL when the grace period runs out. A run that saves a large checkpoint every batch (most of
its time is spent writing) is killed at random moments and restarted with ``autoresume`` each time: once a first
checkpoint is complete, ``latest-rank0.pt`` must always exist and load.
"""

import os
import random
import signal
import time

import pytest
import torch

#: Saves a ~50 MB checkpoint (a 2048 x 2048 layer and Adam's two moments) after every batch, always to the same file
#: name, overwriting it; autoresume continues from the newest one on every restart.
SAVE_EVERY_BATCH = """
import time
import torch
from torch.utils.data import DataLoader, TensorDataset
from composer import Callback, Trainer
from composer.models import ComposerClassifier

class Announce(Callback):
    def batch_start(self, state, logger):
        if int(state.timestamp.batch) > 0:  # the previous batch's checkpoint is complete
            with open('saved', 'w') as f:
                f.write(str(int(state.timestamp.batch)))

torch.manual_seed(0)
model = ComposerClassifier(torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2)), num_classes=2)
dataset = TensorDataset(torch.randn(64, 2048), torch.randint(0, 2, (64,)))
trainer = Trainer(
    model=model,
    train_dataloader=DataLoader(dataset, batch_size=4),
    optimizers=torch.optim.Adam(model.parameters(), lr=1e-4),
    max_duration='1000ep',
    device='cpu',
    progress_bar=False,
    run_name='atomic',
    save_folder='checkpoints',
    save_filename='checkpoint.pt',
    save_overwrite=True,
    save_interval='1ba',
    autoresume=True,
    callbacks=[Announce()],
)
trainer.fit()
"""

KILLS = 8


def test_sigkill_at_random_moments_of_saves_never_breaks_the_latest_checkpoint(
    start_scenario,
    wait_for_files,
    tmp_path,
):
    rng = random.Random(int(os.environ.get('COMPOSER_TEST_SEED', '1234')))
    latest = tmp_path / 'checkpoints' / 'latest-rank0.pt'
    resumed_from = []
    for kill in range(KILLS):
        if (tmp_path / 'saved').exists():
            os.remove(tmp_path / 'saved')
        proc = start_scenario(SAVE_EVERY_BATCH)
        wait_for_files(str(tmp_path / 'saved'), 1, proc, timeout=180)
        resumed_from.append(int((tmp_path / 'saved').read_text()))
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the middle of one of the following saves
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        # A first checkpoint was complete before the kill: the symlink exists and its checkpoint loads.
        assert latest.is_symlink() and latest.exists(), f'kill {kill}: {sorted(os.listdir(latest.parent))}'
        try:
            state = torch.load(latest, map_location='cpu', weights_only=False)
        except Exception as e:  # a truncated file: the bug this test guards against
            pytest.fail(f'kill {kill}: {latest} does not load: {type(e).__name__}: {e}')
        assert state['state']['timestamp']['Timestamp']['batch'] >= resumed_from[-1]
    # Every restart continued from the checkpoint of the run before it, never from scratch.
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] > resumed_from[0], resumed_from
