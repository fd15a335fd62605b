# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Stand-ins for the Hugging Face tokenizers LLM Foundry's tests download, trained here with ``tokenizers``.

There is no Hugging Face hub (nor github.com, where LLM Foundry's ``tokenizers.zip`` fixture asset lives) on this
machine. This module trains one small byte-level BPE tokenizer on text of the checkout itself and writes it

- into ``<run>/tests/assets/tokenizers/<name>/`` for the fixture names the suite uses (``gpt2``, ``neox``): LLM
  Foundry's ``download_tokenizers_files()`` downloads nothing when that folder exists;
- into a Hugging Face cache (``HF_HUB_CACHE``) as the snapshot of the hub names the suite's configs use
  (``EleutherAI/gpt-neox-20b`` in scripts/train/yamls/pretrain/testing.yaml and scripts/eval/yamls/test_eval.yaml,
  ``mosaicml/mpt-7b``, and ``bert-base-uncased`` without an EOS token, as test_builders.py expects), which
  ``from_pretrained`` finds with ``HF_HUB_OFFLINE=1``.

The special tokens are the originals' (``<|endoftext|>`` as BOS, EOS and UNK; BERT's ``[CLS]``, ``[SEP]``, ...); the
vocabulary is small (2048). Runs in the client venv (it needs ``tokenizers`` and ``transformers``)::

    <client python> -m clients.suites.tokenizers --corpus <file.jsonl>... --assets <dir> --hub-cache <dir>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VOCAB_SIZE = 2048
#: The snapshot's (made-up) commit; a real one is 40 hex digits too.
REVISION = '0' * 40
GPT = {'bos_token': '<|endoftext|>', 'eos_token': '<|endoftext|>', 'unk_token': '<|endoftext|>'}
BERT = {'cls_token': '[CLS]', 'sep_token': '[SEP]', 'pad_token': '[PAD]', 'mask_token': '[MASK]', 'unk_token': '[UNK]'}
#: Fixture asset folder name -> special tokens.
ASSETS = {'gpt2': GPT, 'neox': GPT}
#: Hub repository -> special tokens.
HUB = {'EleutherAI/gpt-neox-20b': GPT, 'mosaicml/mpt-7b': GPT, 'bert-base-uncased': BERT}


def _texts(corpus: list[Path]) -> list[str]:
    texts = []
    for path in corpus:
        for line in path.read_text().splitlines():
            if line.strip():
                texts.append(str(json.loads(line).get('text', '')))
    if not texts:
        raise SystemExit(f'error: no "text" lines in {", ".join(map(str, corpus))}')
    return texts


def train(corpus: list[Path], specials: dict[str, str]):
    """A byte-level BPE tokenizer (every byte has a token, so any text encodes) with these special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=sorted(set(specials.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(corpus), trainer=trainer)
    return tokenizer


def save(tokenizer, specials: dict[str, str], dest: Path) -> None:
    """Writes a ``transformers`` fast tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=2048, **specials).save_pretrained(str(dest))


def write_hub_snapshot(cache: Path, repo: str, source: Path) -> Path:
    """Puts the files of ``source`` into ``cache`` as the main revision of the hub model ``repo``."""
    base = cache / ('models--' + repo.replace('/', '--'))
    snapshot = base / 'snapshots' / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (base / 'refs').mkdir(exist_ok=True)
    (base / 'refs' / 'main').write_text(REVISION)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m clients.suites.tokenizers',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--corpus', type=Path, nargs='+', required=True, help='JSON lines files with a "text" field')
    parser.add_argument('--assets', type=Path, required=True, help='the tests/assets/tokenizers folder to write')
    parser.add_argument('--hub-cache', type=Path, required=True, help='the HF_HUB_CACHE folder to write')
    args = parser.parse_args(argv)
    trained = {}
    for name, specials in list(ASSETS.items()) + list(HUB.items()):
        key = tuple(sorted(specials.items()))
        if key not in trained:
            trained[key] = train(args.corpus, specials)
        if name in ASSETS:
            dest = args.assets / name
        else:
            dest = args.hub_cache.parent / 'sources' / name.replace('/', '--')
        save(trained[key], specials, dest)
        if name in HUB:
            write_hub_snapshot(args.hub_cache, name, dest)
        print(f'{name}: {dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
