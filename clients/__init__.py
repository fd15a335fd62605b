# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Client checks: other projects' own entry points run against the fork (``make client``, ``make client-tests``)."""
