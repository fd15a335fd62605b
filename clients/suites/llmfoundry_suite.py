# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""LLM Foundry release/v0.22.0's own CPU tests that drive Composer's Trainer, in the client venv."""

from __future__ import annotations

from pathlib import Path

from clients.suites.outcomes import SuiteError
from clients.suites.run import Suite

NAME = 'llmfoundry'
PATHS = ['tests/a_scripts/train', 'tests/a_scripts/eval', 'tests/callbacks', 'tests/optim', 'tests/test_registry.py']


def prepare(checkout: Path, out: Path, paths: list[str] | None = None) -> Suite:
    raise SuiteError('not yet')
