"""Pre-tokenized llm.c-format shards as a data set, trained on with no tokenization at all.

`data=fineweb10b_gpt2` downloads the GPT-2-tokenized FineWeb shards modded-nanogpt's speedrun trains on, from
the hub's dataset repo `kjj0/fineweb10B-gpt2`: `fineweb_val_000000.bin` (100M tokens) and
`fineweb_train_000001.bin` ... `fineweb_train_000103.bin` (100M tokens each, 10.3B in all; about 200 MB a
shard), `data.shards=N` of the train shards. `data.shards_dir=<folder>` takes any folder of llm.c shards
instead (names holding `train` or `val` say the split; `data.shards=N` keeps the first N train shards).
Either way meta.json lists the shards where they lie (nanogpt/data/batches.py reads them), after every shard's
header and token ids were checked: llm.c's version 1 holds GPT-2 tokens, the only kind these shards may hold.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from tqdm import tqdm

from nanogpt import tokenizer as tok
from nanogpt.config import DataConfig
from nanogpt.data import llmc_shards as llmc
from nanogpt.data.token_files import finish_dataset
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

HUB_NAMES = "fineweb_{split}_{index:06d}.bin"  # the repo's file names; train shards count from 1, val is 0
SHARD_BYTES = llmc.HEADER_BYTES + 100_000_000 * 2  # one of the repo's shards, for the free-disk check
_SPLIT = re.compile(r"(?<![a-z])(train|val)(?![a-z])")


def prepare_pretokenized(data: DataConfig, out: str) -> str:
    """meta.json in `out` for llm.c shards: downloaded into `out`, or found in `data.shards_dir`."""
    if data.shards_dir is not None:
        folder = os.path.abspath(os.path.expanduser(data.shards_dir))
        files = scan_folder(folder)
    else:
        assert data.dataset is not None  # validation.data_kind
        folder = out
        files = download(data.dataset, data.shards or 0, out)
    splits = {s: [f for f in files if _split_of(f) == s] for s in ("train", "val")}
    if data.shards is not None:
        splits["train"] = splits["train"][: data.shards]
    for split, names in splits.items():
        if not names:
            raise UserError(
                f"{folder} holds no {split} shard (a .bin file with {split!r} in its name): llm.c names them "
                f"<name>_{split}_000000.bin"
            )
    shards = {
        s: [_checked(os.path.join(folder, n)) for n in tqdm(names, desc=f"checking {s} shards", unit="shard")]
        for s, names in splits.items()
    }
    meta = {
        "tokenizer": tok.GPT2Tokenizer().to_meta(),
        "vocab_size": tok.GPT2_VOCAB,
        "dtype": "uint16",
        **{f"{s}_tokens": sum(x["tokens"] for x in shards[s]) for s in ("train", "val")},
        "shards": {"format": "llm.c", "dir": None if folder == os.path.abspath(out) else folder, **shards},
        "source": f"llm.c shards in {folder}" if data.shards_dir else f"huggingface_hub: {data.dataset}",
    }
    os.makedirs(out, exist_ok=True)
    finish_dataset(out, meta)
    return out


def _split_of(name: str) -> str | None:
    found = set(_SPLIT.findall(name.lower()))
    return found.pop() if len(found) == 1 else None


def scan_folder(folder: str) -> list[str]:
    """The llm.c shards in `folder`, sorted; an empty folder or one of mixed formats is one line."""
    if not os.path.isdir(folder):
        raise UserError(f"data.shards_dir={folder!r} is not a folder: give the folder holding the .bin shards")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    shards = [n for n in names if n.endswith(".bin")]
    others = sorted({os.path.splitext(n)[1] for n in names if n.endswith((".npy", ".pt", ".arrow", ".parquet"))})
    if others and shards:
        raise UserError(
            f"{folder} mixes formats (.bin shards and {', '.join(others)} files): keep only llm.c .bin shards there"
        )
    if not shards:
        found = f" (it has {', '.join(others)} files, which are not llm.c shards)" if others else ""
        raise UserError(f"{folder} holds no llm.c .bin shards{found}: point data.shards_dir at a folder of them")
    unsplit = [n for n in shards if _split_of(n) is None]
    if unsplit:
        raise UserError(f"cannot tell the split of {os.path.join(folder, unsplit[0])}: put train or val in its name")
    versions = {n: llmc.read_header(os.path.join(folder, n)).version for n in shards}
    if len(set(versions.values())) > 1:
        a, b = sorted(set(versions.values()))[:2]
        first = {v: n for n, v in reversed(versions.items())}
        raise UserError(
            f"{folder} mixes llm.c shard formats: {first[a]} is version {a} ({llmc.TOKENIZERS[a]} tokens), "
            f"{first[b]} version {b} ({llmc.TOKENIZERS[b]}): keep shards of one tokenizer"
        )
    return shards


def _checked(path: str) -> dict:
    """A shard's entry in meta.json, once its header and token ids show it holds GPT-2 tokens."""
    shard = llmc.read_header(path)
    if shard.version != 1:
        raise UserError(
            f"{path} holds {llmc.TOKENIZERS.get(shard.version, 'unknown')} tokens (llm.c version {shard.version}), "
            "not GPT-2's: these shards need their own tokenizer, which we do not have"
        )
    if shard.tokens == 0:
        raise UserError(f"{path} holds no tokens: remove it from the folder")
    tokens = llmc.read_tokens(path)
    top = max(int(tokens[i : i + 2**24].max()) for i in range(0, len(tokens), 2**24))
    if top >= tok.GPT2_VOCAB:
        raise UserError(
            f"{path} holds token id {top}, beyond GPT-2's {tok.GPT2_VOCAB}: the shards were made "
            "with another tokenizer; use shards of GPT-2 tokens"
        )
    return {"file": os.path.basename(path), "tokens": shard.tokens}


# ---- from the hub -------------------------------------------------------------------------------------------


def hf_hub_download(**kwargs) -> str:
    """huggingface_hub's download, here so that tests can stand a local copier in for the hub."""
    from huggingface_hub import hf_hub_download as download_file

    return download_file(**kwargs)


def download(repo: str, shards: int, out: str) -> list[str]:
    """The val shard and `shards` train shards of `repo`, into `out`. huggingface_hub writes each file under a
    temporary name, renames it when complete and skips the complete ones, so a killed download resumes."""
    if shards < 1:
        raise UserError("data.shards must be >= 1 to download a pre-tokenized set: data.shards=N (100M tokens each)")
    names = [HUB_NAMES.format(split="val", index=0)] + [
        HUB_NAMES.format(split="train", index=i) for i in range(1, shards + 1)
    ]
    os.makedirs(out, exist_ok=True)
    missing = [n for n in names if not os.path.exists(os.path.join(out, n))]
    free = shutil.disk_usage(out).free
    if len(missing) * SHARD_BYTES > free:
        raise UserError(
            f"{len(missing)} shards of {repo} need about {len(missing) * SHARD_BYTES / 1e9:.1f} GB but {out} has "
            f"{free / 1e9:.1f} GB free: free some space, set paths.data_dir to a larger disk, or lower data.shards"
        )
    for name in tqdm(names, desc=f"downloading {repo}", unit="shard"):
        try:
            hf_hub_download(repo_id=repo, filename=name, repo_type="dataset", local_dir=out)
        except Exception as e:  # the network and the hub fail in many types
            raise UserError(_download_error(repo, name, e)) from None
    return names


def _download_error(repo: str, name: str, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    kind = type(e).__name__
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in first.lower():
        return (
            f"cannot download {name} from {repo} (no network, and no local copy): connect to the network (unset "
            "HF_HUB_OFFLINE), or give data.shards_dir=<a folder of llm.c shards>"
        )
    if kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"{repo} has no {name}: lower data.shards"
    return f"cannot download {name} from {repo} ({kind}: {first}): check data.dataset and the network"
