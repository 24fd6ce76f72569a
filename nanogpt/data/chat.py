"""The `chat` kind of data set: conversations -> the chat template's tokens and loss mask -> packed rows.

Where they come from: `data.source`, .jsonl (one record a line), .json (a list of records) or .parquet files, or a
folder of them, or `synthetic:reverse` (nanogpt/data/synthetic_chat.py); or `data.dataset`, a hub set read
through `datasets` (HuggingFaceTB/smol-smoltalk in conf/data/chat.yaml) or a local folder `datasets` reads. A record
holds a conversation in `data.messages_column` (format=messages: [{"role", "content"}, ...]) or, format=alpaca,
`instruction`, an optional `input` and `output`, mapped to a user turn and the assistant's answer. Each one is
checked (nanogpt/chat/template.py's check_conversation): the first bad one stops preparation in one line, before
any file is written.

On disk, beside the usual train.bin/val.bin/meta.json (nanogpt/data/token_files.py): train_mask.bin and
val_mask.bin, one uint8 per token, 1 where the token is one the model must learn to write. The tokens are rows of
`data.pack_block_size + 1` tokens (x is a row's first block, y its last): conversations are packed best-fit
(longest first, each into the fullest row it still fits), never split across rows; one longer than a row is cut
to it and counted, and one whose answer is cut away entirely is dropped and counted. The rest of a row is padding
(end-of-text, mask 0); meta.json's `chat` records the waste. Bits per byte count the answers' bytes per answer
token. Prepared in memory, as the `text` kind: a rebuild keeps the old set until the new one is complete.
"""

from __future__ import annotations

import bisect
import glob
import json
import logging
import math
import os
from typing import Any

import numpy as np

from nanogpt import tokenizer as tok
from nanogpt.chat.template import ChatTemplate, check_conversation
from nanogpt.config import DataConfig
from nanogpt.data.text import write_in_memory
from nanogpt.data.token_files import SPLITS, tokenized_meta
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

SPLIT_SEED = 2357  # the seeded shuffle that picks the held-out conversations (nanoGPT's split seed)
FILE_TYPES = (".jsonl", ".json", ".parquet")
HELDOUT = "heldout.jsonl"  # a synthetic set's val conversations, for the chat_exact evaluation task


def prepare_chat(data: DataConfig, out: str) -> str:
    """Conversations -> packed token rows and their loss masks in `out`; returns `out`."""
    records, source = read_records(data)
    convs = [to_messages(r, data, f"{source}, conversation {i}") for i, r in enumerate(records)]
    splits = split_conversations(convs, data.val_fraction, source)
    tokenizer, extra = _tokenizer(data, splits["train"])
    template = ChatTemplate.of(tokenizer)
    row = data.pack_block_size + 1
    pad = tokenizer.eot_token if tokenizer.eot_token is not None else template.end
    ids, files, stats, answer_bytes = {}, {}, {}, {}
    for split in SPLITS:
        encoded = [template.encode(m) for m in splits[split]]
        tokens, mask, stats[split] = pack(encoded, row, pad)
        if not len(tokens):
            raise UserError(f"no {split} conversation keeps an answer within data.pack_block_size={row - 1}: raise it")
        ids[split] = tokens
        files[f"{split}_mask.bin"] = mask.tobytes()
        answer_bytes[split] = _answer_bytes(tokenizer, tokens, mask)
        log.info(
            "%s: %d conversations in %d rows of %d tokens, %.1f%% padding, %d cut to a row, %d dropped (answer cut)",
            split, stats[split]["conversations"], len(tokens) // row, row, 100 * stats[split]["padding"],
            stats[split]["truncated"], stats[split]["dropped"],
        )  # fmt: skip
    answers = {s: int(np.frombuffer(files[f"{s}_mask.bin"], np.uint8).sum()) for s in SPLITS}
    meta = tokenized_meta(
        tokenizer,
        counts={s: len(ids[s]) for s in SPLITS},
        text_bytes=answer_bytes,
        source=source,
        val_texts=lambda: (m["content"] for c in splits["val"] for m in c if m["role"] == "assistant"),
        **extra,
    )
    meta["bytes_per_token"] = {s: round(answer_bytes[s] / answers[s], 6) for s in SPLITS}  # per answer token
    meta["chat"] = {"format": data.format, "row_tokens": row, "answer_tokens": answers, **_by_stat(stats)}
    if data.source is not None and data.source.startswith("synthetic:"):
        files[HELDOUT] = "".join(json.dumps({"messages": c}) + "\n" for c in splits["val"]).encode()
    write_in_memory(out, tokenizer, ids, meta, files)
    return out


def read_records(data: DataConfig) -> tuple[list[Any], str]:
    """The records of the conversations' source, and what meta.json records as it."""
    if data.dataset is not None:
        return _read_datasets(data), f"datasets: {data.dataset}" + (f" ({data.subset})" if data.subset else "")
    source = data.source
    assert source is not None  # validation.data_kind
    if source.startswith("synthetic:"):
        from nanogpt.data.synthetic_chat import conversations

        return [{"messages": c} for c in conversations(source, data.synthetic_examples)], source
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(glob.escape(path), "**", "*"), recursive=True) if _ours(f))
    else:
        files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    if not files or not all(os.path.isfile(f) and _ours(f) for f in files):
        raise UserError(f"data.source={source!r} holds no conversation files: give .jsonl, .json or .parquet files")
    records: list[Any] = []
    for f in files:
        records += _read_file(f)
    return records, path


def _ours(path: str) -> bool:
    return path.lower().endswith(FILE_TYPES)


def _read_file(path: str) -> list[Any]:
    """One file's records: JSON lines, a JSON list, or Parquet rows."""
    try:
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with open(path, encoding="utf-8") as f:
            if path.lower().endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            loaded = json.load(f)
    except (ValueError, OSError) as e:  # JSON, UTF-8 and Parquet errors are all ValueErrors or OSErrors
        raise UserError(f"{path} is not conversations in JSON or Parquet ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, list):
        raise UserError(f"{path} is not a JSON list of conversations: give a list of records, or JSON lines")
    return loaded


def _read_datasets(data: DataConfig) -> list[Any]:
    """data.dataset through `datasets`: its train split (else its only one), as a list of records."""
    import datasets

    try:
        loaded = datasets.load_dataset(os.path.expanduser(str(data.dataset)), data.subset)
    except Exception as e:  # the hub, the network and file parsing fail in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"data.dataset={data.dataset!r} did not load ({type(e).__name__}: {first})") from None
    names = list(loaded.keys())
    if "train" not in names and len(names) != 1:
        raise UserError(f"data.dataset={data.dataset!r} has splits {', '.join(names)} and none is called train")
    return loaded["train" if "train" in names else names[0]].to_list()


def to_messages(record: Any, data: DataConfig, where: str) -> list[dict]:
    """A record as a checked conversation with an answer to learn, or one line saying what is wrong with it."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a record (a JSON object): {str(record)[:80]!r}")
    if data.format == "messages":
        if data.messages_column not in record:
            raise UserError(
                f"{where} has no {data.messages_column!r} (it has {', '.join(map(str, record)) or 'nothing'}): set "
                "data.messages_column, or data.format=alpaca for instruction/input/output records"
            )
        return check_conversation(record[data.messages_column], where, need_reply=True)
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise UserError(f"{where}: no {key!r} text: alpaca records hold instruction, input (optional) and output")
    extra = record.get("input") or ""
    question = record["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": record["output"]}]
    return check_conversation(turns, where, need_reply=True)


def split_conversations(convs: list[list[dict]], val_fraction: float, source: str) -> dict[str, list[list[dict]]]:
    """A seeded shuffle picks `val_fraction` of the conversations (at least one) to hold out."""
    n_val = math.ceil(val_fraction * len(convs))
    if n_val >= len(convs):
        raise UserError(
            f"{source} has {len(convs)} conversations: too few to hold out data.val_fraction={val_fraction} of them "
            "and keep some for training; give more conversations or lower data.val_fraction"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(convs))
    held = set(order[:n_val].tolist())
    return {
        "train": [c for i, c in enumerate(convs) if i not in held],
        "val": [c for i, c in enumerate(convs) if i in held],
    }


def _tokenizer(data: DataConfig, train: list[list[dict]]) -> tuple[tok.Tokenizer, dict]:
    """GPT-2's BPE with the chat markers (ids 50257-50260), or a BPE trained on the train conversations' text with
    the markers reserved."""
    if data.tokenizer == "gpt2":
        return tok.GPT2Tokenizer(chat=True), {}
    texts = (m["content"] for c in train for m in c)
    trained_on = f"the train split's {len(train):,} conversations"
    tokenizer, settings = tok.train_bpe_for_dataset(data, texts, None, trained_on, chat=True)
    return tokenizer, {"bpe": settings}


def pack(encoded: list[tuple[list[int], list[int]]], row: int, pad: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Best-fit packing of (ids, mask) conversations into rows of `row` tokens, padded with `pad` (mask 0): the
    tokens and masks, row after row, and what was cut, dropped and padded."""
    kept, truncated, dropped = [], 0, 0
    for ids, mask in encoded:
        if len(ids) > row:
            ids, mask, truncated = ids[:row], mask[:row], truncated + 1
        if not any(mask):  # its answer lay past the row: nothing to learn from what is left
            dropped += 1
            continue
        kept.append((ids, mask))
    rows: list[list[int]] = []  # conversation indices in each row
    free: list[tuple[int, int]] = []  # (space left, row), sorted: the fullest row that fits is found by bisection
    for i in sorted(range(len(kept)), key=lambda i: -len(kept[i][0])):
        n = len(kept[i][0])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, r = free.pop(at)
        else:
            space, r = row, len(rows)
            rows.append([])
        rows[r].append(i)
        if space - n:
            bisect.insort(free, (space - n, r))
    tokens = np.full((len(rows), row), pad, dtype=np.int64)
    masks = np.zeros((len(rows), row), dtype=np.uint8)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            ids, mask = kept[i]
            tokens[r, at : at + len(ids)], masks[r, at : at + len(ids)] = ids, mask
            at += len(ids)
    used = sum(len(ids) for ids, _ in kept)
    stats = {"conversations": len(kept), "truncated": truncated, "dropped": dropped}
    stats["padding"] = round(1 - used / max(tokens.size, 1), 6)
    return tokens.reshape(-1), masks.reshape(-1), stats


def _answer_bytes(tokenizer: tok.Tokenizer, tokens: np.ndarray, mask: np.ndarray) -> int:
    """UTF-8 bytes of the answers' text: the marker tokens closing them stand for no text."""
    special = set(tokenizer.special_tokens.values())
    return len(tokenizer.token_bytes([t for t in tokens[mask == 1].tolist() if t not in special]))


def _by_stat(stats: dict[str, dict]) -> dict[str, dict]:
    """{split: {stat: value}} -> {stat: {split: value}}, as meta.json's other per-split figures."""
    return {k: {s: stats[s][k] for s in SPLITS} for k in stats[SPLITS[0]]}
