# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Clients' own test suites, run twice in the same venv: on the installed fork and on upstream's 0.32.1 package.

``python -m clients.suites --composer <checkout> --llmfoundry <checkout>`` (``make client-tests``) runs each suite once
with the venv's installed fork and once with upstream's unmodified ``composer`` package first on ``PYTHONPATH``,
records every test's outcome (pytest-reportlog) and compares them: they must be identical, or the difference must be
explained in ``differences.toml``. See docs/client-tests.md.
"""
