# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``python -m clients.llmfoundry``: see :mod:`clients.llmfoundry.run`."""

import sys

from clients.llmfoundry.run import main

sys.exit(main())
