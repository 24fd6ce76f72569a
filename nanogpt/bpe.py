"""Train a byte-level BPE on a corpus with Hugging Face `tokenizers`, and run it on tiktoken.

The tokenizer is GPT-2's kind: text is cut into pieces by a regex (GPT-2's by default: words with their
leading space, numbers, punctuation runs, whitespace runs), each piece is read as UTF-8 bytes written with
GPT-2's byte-to-character alphabet (256 symbols, so any text has tokens and nothing is ever unknown), and BPE
merges the most frequent adjacent pair again and again within pieces until the vocabulary is full.
`<|endoftext|>` is the one special token (id 0); it separates documents in the token files.

`tokenizer.json` (tokenizers' own format) is the definition: it is what `prepare.py` saves beside the token
files, what a run dir carries and what `export.py` hands to transformers. Encoding runs on tiktoken, built from
the same vocabulary with each token's id as its merge rank: tokenizers' trainer numbers tokens in the order it
creates them, so both apply the same merges in the same order. tiktoken encodes much faster than tokenizers
(benchmarks/tokenizer_speed.py; docs/BENCHMARKS.md), and tests check both give the same ids, and that
transformers' AutoTokenizer reading the exported file does too.

Training is deterministic: the trainer breaks ties between equally frequent pairs by their ids, the initial
alphabet is sorted, and counts are summed, whatever the number of threads or the hash seed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from nanogpt.errors import UserError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
_CHUNK_CHARS = 1 << 16  # the plain-text trainer's input pieces: cut at line ends, about 64K characters each


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the other 68
    (controls, space, NBSP, soft hyphen) take the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(0x100 + i) for i, b in enumerate(others)}}


def token_to_bytes(token: str) -> bytes:
    decode = {c: b for b, c in byte_alphabet().items()}
    return bytes(decode[c] for c in token)


def train(texts: Iterable[str], vocab_size: int, pattern: str, length: int | None = None) -> str:
    """A byte-level BPE of `vocab_size` tokens trained on `texts`, as tokenizer.json text. `length` (the
    number of texts, when known) only feeds the progress bar."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    check_pattern(pattern)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=length is not None and length > 1000,
    )
    tk.train_from_iterator(texts, trainer, length=length)
    # Tokenizing workers forked after this use tiktoken, never the trainer's thread pool: say so, or tokenizers
    # warns in every worker that it disables the parallelism it had used.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return tk.to_str()


def text_chunks(text: str) -> Iterator[str]:
    """`text` in pieces of about _CHUNK_CHARS cut after a newline, so that the trainer can share them out."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def check_pattern(pattern: str) -> None:
    """`data.bpe_pattern` must compile in both regex engines: tokenizers' (Oniguruma) and tiktoken's."""
    import tiktoken
    from tokenizers import Regex

    bytes_only = {bytes([b]): b for b in range(256)}
    try:
        Regex(pattern)
        tiktoken.Encoding("check", pat_str=pattern, mergeable_ranks=bytes_only, special_tokens={}).encode("check")
    except Exception as e:  # both engines raise their own types
        raise UserError(
            f"data.bpe_pattern={pattern!r} is not a regex both tokenizers and tiktoken read ({e})"
        ) from None


def read_definition(definition: str) -> tuple[dict[str, Any], str, dict[str, int]]:
    """tokenizer.json's model vocabulary, split pattern and special tokens, checked to be what `train` writes."""
    try:
        spec = json.loads(definition)
        vocab = spec["model"]["vocab"]
        steps = spec["pre_tokenizer"]["pretokenizers"]
        pattern = steps[0]["pattern"]["Regex"]
        specials = {t["content"]: t["id"] for t in spec["added_tokens"] if t["special"]}
        ok = spec["model"]["type"] == "BPE" and steps[1]["type"] == "ByteLevel" and EOT in specials
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise UserError("tokenizer.json is not a byte-level BPE written by prepare.py: prepare the data set again")
    return vocab, pattern, specials


def tiktoken_encoding(definition: str, name: str = "bpe") -> Any:
    """The tokenizer.json text `definition` as a tiktoken Encoding: ranks are token ids."""
    import tiktoken

    vocab, pattern, specials = read_definition(definition)
    ranks = {token_to_bytes(t): i for t, i in vocab.items() if t not in specials}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
