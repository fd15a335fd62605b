# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A run that saves a ~50 MB checkpoint after every batch, always to the same file name, overwriting it.

A 2048 x 2048 layer and Adam's two moments; ``autoresume`` continues from the newest checkpoint on every restart. Run
by ``test_atomic_checkpoints.py`` in its working directory (``python save_every_batch.py``), which it SIGKILLs at
random moments; the file ``saved`` holds the batch count whose checkpoint is complete.
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

from composer import Callback, Trainer
from composer.models import ComposerClassifier


class Announce(Callback):
    """Writes the batch count into ``saved`` once the previous batch's checkpoint is complete."""

    def batch_start(self, state, logger):
        if int(state.timestamp.batch) > 0:  # the previous batch's checkpoint is complete
            with open('saved', 'w') as f:
                f.write(str(int(state.timestamp.batch)))


def main() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2))
    model = ComposerClassifier(net, num_classes=2)
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


if __name__ == '__main__':
    main()
