# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Production set-ups of the fork's preemption, with the real components started by the tests themselves.

SLURM, S3 (moto's server on loopback), torchrun restarts, two launchers as two nodes. Fork-only: these tests check
the fork's recipes (README) end to end and do not go upstream.
"""
