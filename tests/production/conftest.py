# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Fixtures for the production set-ups: the signal-handling tests' own fixtures (one copy), and this folder on sys.path.

The scenario runner, the launcher commands, the marker and checkpoint helpers come from
``tests/signal_handling/conftest.py``, loaded by path, so that this fork-only folder adds no second copy of them.
"""

import importlib.util
import sys
from pathlib import Path

_SIGNAL_HANDLING_CONFTEST = Path(__file__).resolve().parents[1] / 'signal_handling' / 'conftest.py'
_spec = importlib.util.spec_from_file_location('_signal_handling_fixtures', _SIGNAL_HANDLING_CONFTEST)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

# The helper modules of this folder (checks, s3_server, slurm_cluster, ...) import by name in its test modules, which
# pytest imports with --import-mode=importlib, without a package on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCENARIOS = _fixtures.SCENARIOS
results_of = _fixtures.results_of
scenario_results = _fixtures.scenario_results
run_scenario = _fixtures.run_scenario
start_scenario = _fixtures.start_scenario
wait_for_files = _fixtures.wait_for_files
composer_launcher = _fixtures.composer_launcher
torchrun = _fixtures.torchrun
rank_logs = _fixtures.rank_logs
marks = _fixtures.marks
checkpoints = _fixtures.checkpoints
finish = _fixtures.finish
