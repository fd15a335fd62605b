# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Compare the model weights of two Composer checkpoints bit for bit (run in the client venv).

::

    <client venv>/bin/python -m clients.llmfoundry.checkpoints <a.pt> <b.pt>

prints one JSON line: ``identical`` (every tensor of ``state['model']`` equal with ``torch.equal``, same names, same
dtypes), the number of tensors, the names that differ, and each checkpoint's batch (``state['timestamp']``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _load(path: str) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location='cpu', weights_only=False)


def _batch(checkpoint: dict[str, Any]) -> int | None:
    timestamp = checkpoint.get('state', {}).get('timestamp', {})
    batch = timestamp.get('batch') if isinstance(timestamp, dict) else None
    return None if batch is None else int(getattr(batch, 'value', batch))


def compare(a: str, b: str) -> dict[str, Any]:
    import torch

    first, second = _load(a), _load(b)
    model_a, model_b = first['state']['model'], second['state']['model']
    names = sorted(set(model_a) | set(model_b))
    differing = [
        name for name in names if name not in model_a or name not in model_b or
        model_a[name].dtype != model_b[name].dtype or not torch.equal(model_a[name], model_b[name])
    ]
    return {
        'identical': not differing and bool(names),
        'tensors': len(names),
        'differing': differing,
        'batch': [_batch(first), _batch(second)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m clients.llmfoundry.checkpoints',
        description=__doc__.splitlines()[0],
    )
    parser.add_argument('a')
    parser.add_argument('b')
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.a, args.b)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
