"""llm.c's token shard format, which our sharded data sets use too.

A shard is a 1024-byte header of 256 little-endian int32 — [0] the magic number 20240520, [1] the version,
[2] the number of tokens, the rest zero — followed by the tokens: uint16 in version 1 (GPT-2's vocabulary,
as llm.c's and modded-nanogpt's FineWeb shards), uint32 in version 2 (llm.c's LLaMA 3 shards). A shard is
complete exactly when its size is the header plus the tokens the header counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from nanogpt.errors import UserError

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSIONS = {1: np.dtype("<u2"), 2: np.dtype("<u4")}  # version -> token dtype
TOKENIZERS = {1: "GPT-2", 2: "LLaMA 3"}  # what llm.c writes under each version


@dataclass(frozen=True)
class Shard:
    path: str
    version: int
    tokens: int

    @property
    def dtype(self) -> np.dtype:
        return VERSIONS[self.version]


def version_for(dtype: np.dtype) -> int:
    """The version whose token width is `dtype`'s (uint16: 1, uint32: 2)."""
    for version, d in VERSIONS.items():
        if d.itemsize == np.dtype(dtype).itemsize:
            return version
    raise ValueError(f"llm.c shards hold uint16 or uint32 tokens, not {dtype}")


def header(tokens: int, version: int = 1) -> bytes:
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[:3] = MAGIC, version, tokens
    return h.tobytes()


def is_shard(path: str) -> bool:
    """Whether the file starts with llm.c's magic number (says nothing of the rest)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and int(np.frombuffer(head, dtype="<i4")[0]) == MAGIC


def read_header(path: str) -> Shard:
    """The shard's header, checked against the file's size; anything else is one line naming the file."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path} is {len(raw)} bytes, shorter than llm.c's {HEADER_BYTES}-byte header: not a shard")
    magic, version, tokens = (int(x) for x in np.frombuffer(raw, dtype="<i4")[:3])
    if magic != MAGIC:
        raise UserError(
            f"{path} is not an llm.c token shard (magic number {magic}, not {MAGIC}): remove it from the folder, "
            "or write it with llm.c's header"
        )
    if version not in VERSIONS:
        raise UserError(f"{path} is llm.c shard version {version}; we read versions 1 (uint16) and 2 (uint32)")
    want = HEADER_BYTES + tokens * VERSIONS[version].itemsize
    have = os.path.getsize(path)
    if have != want:
        raise UserError(
            f"{path} has {have} bytes but its header counts {tokens} tokens ({want} bytes): the shard is "
            "truncated or still being written; download or prepare it again"
        )
    return Shard(path, version, tokens)


def read_tokens(path: str) -> np.memmap:
    """A checked shard's tokens, memory-mapped (pages are read on demand)."""
    shard = read_header(path)
    return np.memmap(path, dtype=shard.dtype, mode="r", offset=HEADER_BYTES, shape=(shard.tokens,))


def write_shard(path: str, tokens: np.ndarray, version: int = 1) -> None:
    """Write a whole shard at once, by rename (a kill leaves the old file or the new one)."""
    with ShardFile(path, version) as f:
        f.append(tokens)


class ShardFile:
    """A shard written as its tokens arrive: into `<path>.partial`, the header filled in, flushed to disk and
    renamed to `path` on `close()`. A kill before then leaves only the .partial file, which nothing reads."""

    def __init__(self, path: str, version: int = 1):
        self.path, self.version, self.tokens = path, version, 0
        self.partial = f"{path}.partial"
        self._file = open(self.partial, "wb")  # closed in close() or discard()
        self._file.write(header(0, version))

    def append(self, tokens: np.ndarray) -> None:
        self._file.write(memoryview(np.ascontiguousarray(tokens, dtype=VERSIONS[self.version])))
        self.tokens += len(tokens)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(header(self.tokens, self.version))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self._file.close()
        os.remove(self.partial)

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()
