# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""What the production tests check in a checkpoint and in the final weights (one copy for every test module)."""

from pathlib import Path

import torch


def checkpoint_batch(path: Path) -> int:
    """The batch a monolithic Composer checkpoint was saved at."""
    state = torch.load(path, map_location='cpu', weights_only=False)
    return int(state['state']['timestamp']['Timestamp']['batch'])


def assert_same_weights(a: Path, b: Path) -> None:
    """``torch.equal`` on every parameter of two ``fit_and_record`` weight files."""
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == [], f'parameters differ from the uninterrupted run: {different}'
