# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""LLM Foundry end to end against the fork: ``python -m clients.llmfoundry [--quick] [--write-docs]``.

:mod:`clients.llmfoundry.venv` builds the client venv (llm-foundry 0.22.0 with the fork as ``mosaicml``);
:mod:`clients.llmfoundry.run` trains a tiny MPT with LLM Foundry's own CLI in the scenarios of ``docs/clients.md``.
"""
