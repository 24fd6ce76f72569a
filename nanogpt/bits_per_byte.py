"""Bytes per token and bits per byte: how losses of models with different tokenizers compare.

A model's loss is in nats per token, and tokens differ: a character, about 3.3 bytes of English for GPT-2's BPE,
more for a BPE trained on the text itself. Bits per byte divides the loss in bits by the UTF-8 bytes each token
stands for on average over the split, which `prepare.py` records in meta.json (`bytes_per_token`): it measures
how well the model compresses the text itself, whatever cuts it into tokens, so a character model, a GPT-2 BPE
model and a 4k BPE model on the same text compare on it (lower is better). Tokens that stand for no text (the
end-of-text between documents) count as tokens but add no bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from nanogpt.errors import UserError

log = logging.getLogger(__name__)

COMPARE_LIMIT = 32 << 20  # bytes of validation text on which the compression report compares with GPT-2


def bytes_per_token(text_bytes: dict[str, int], tokens: dict[str, int]) -> dict[str, float]:
    """Each split's UTF-8 bytes of text per token, the figure bits per byte divides by."""
    return {s: round(text_bytes[s] / tokens[s], 6) for s in tokens if tokens[s]}


def bits_per_byte(losses: dict[str, float], meta: dict) -> dict[str, float]:
    """`{split}_bpb` for each split loss (nats per token) whose data set recorded its bytes per token; data sets
    prepared before bytes were recorded (and pre-tokenized shards, which come without their text) give none. A
    streamed set records one figure for both splits (nanogpt/data/shard_writer.py)."""
    bpt = meta.get("bytes_per_token") or {}
    if isinstance(bpt, (int, float)):
        bpt = dict.fromkeys(losses, bpt)
    return {f"{s}_bpb": loss / math.log(2) / bpt[s] for s, loss in losses.items() if bpt.get(s)}


def compare_with_gpt2(texts: Iterable[str], encode_ordinary, name: str) -> dict:
    """Bytes per token of our tokenizer and of GPT-2's on the same validation text (its first COMPARE_LIMIT
    bytes), logged and returned for meta.json. GPT-2's side is left out, with a warning, where its BPE files
    cannot be had."""
    from nanogpt.tokenizer import gpt2_encoding

    try:
        gpt2 = gpt2_encoding().encode_ordinary
    except UserError as e:
        log.warning("compression report without GPT-2's side: %s", e)
        gpt2 = None
    n_bytes, ours, theirs = 0, 0, 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        ours += len(encode_ordinary(text))
        theirs += len(gpt2(text)) if gpt2 else 0
        if n_bytes >= COMPARE_LIMIT:
            break
    report = {"text_bytes": n_bytes, name: {"tokens": ours, "bytes_per_token": round(n_bytes / max(ours, 1), 4)}}
    line = f"compression on {n_bytes:,} bytes of validation text: {name} {report[name]['bytes_per_token']:.3f}"
    if gpt2:
        report["gpt2"] = {"tokens": theirs, "bytes_per_token": round(n_bytes / max(theirs, 1), 4)}
        line += f", GPT-2 {report['gpt2']['bytes_per_token']:.3f} bytes/token ({theirs / max(ours, 1):.2f}x our tokens)"
    else:
        line += " bytes/token"
    log.info("%s", line)
    return report
