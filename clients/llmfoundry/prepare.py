# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""The inputs of the LLM Foundry runs, made locally: a BPE tokenizer and a synthetic MDS data set.

Runs in the client venv (it needs ``tokenizers``, ``transformers`` and ``streaming``), offline::

    <client venv>/bin/python -m clients.llmfoundry.prepare --dest build/client/inputs --samples 256

writes ``<dest>/tokenizer/`` (a Hugging Face tokenizer folder: ``AutoTokenizer.from_pretrained(<folder>)`` loads it)
and ``<dest>/data/train/`` (MDS shards with one ``text`` column, written by streaming's ``MDSWriter``), replacing what
was there, and prints a JSON line with the tokenizer's vocabulary size. The text is generated from a fixed seed, so
the inputs are the same on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

EOS = '<|endoftext|>'
PAD = '<|pad|>'
SEED = 1234
#: The tokenizer's vocabulary is at most this; the model's ``vocab_size`` must be at least this.
VOCAB_SIZE = 512


def _words(rng: random.Random, count: int) -> list[str]:
    consonants, vowels = 'bcdfghklmnprstvz', 'aeiou'
    words = set()
    while len(words) < count:
        syllables = rng.randint(1, 3)
        words.add(''.join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def texts(samples: int, seed: int = SEED) -> Iterator[str]:
    """``samples`` sentences of made-up words with a skewed (Zipf-like) frequency, the same for the same seed."""
    rng = random.Random(seed)
    words = _words(rng, 300)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    for _ in range(samples):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            sentence = rng.choices(words, weights, k=rng.randint(4, 12))
            sentences.append(' '.join(sentence).capitalize() + rng.choice('..!?'))
        yield ' '.join(sentences)


def write_tokenizer(folder: Path, corpus: list[str]) -> int:
    """Train a byte-level BPE tokenizer on ``corpus``, save it as a Hugging Face folder; return its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(folder))
    loaded = AutoTokenizer.from_pretrained(str(folder))  # what LLM Foundry's build_tokenizer does
    if loaded.eos_token != EOS or loaded.pad_token != PAD or len(loaded) > VOCAB_SIZE:
        raise RuntimeError(f'The tokenizer saved in {folder} does not load back as written: {loaded!r}')
    return len(loaded)


def write_data(folder: Path, corpus: list[str]) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=str(folder), columns={'text': 'str'}, compression=None) as writer:
        for text in corpus:
            writer.write({'text': text})


def prepare(dest: Path, samples: int) -> dict:
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    corpus = list(texts(samples))
    vocab = write_tokenizer(dest / 'tokenizer', corpus)
    write_data(dest / 'data' / 'train', corpus)
    return {'tokenizer': str(dest / 'tokenizer'), 'data': str(dest / 'data'), 'vocab_size': vocab, 'samples': samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m clients.llmfoundry.prepare', description=__doc__.splitlines()[0])
    parser.add_argument('--dest', type=Path, required=True, help='the inputs folder (replaced)')
    parser.add_argument('--samples', type=int, default=256, help='text samples in the data set (default: 256)')
    args = parser.parse_args(argv)
    print(json.dumps(prepare(args.dest.resolve(), args.samples)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
