"""The chat template: one source of truth for turning conversations into tokens, used by prepare.py (chat data
and its loss mask), chat.py, evaluation, the server and export.py (as a Jinja `chat_template`, so that Hugging
Face's `tokenizer.apply_chat_template` gives exactly our ids).

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": <text>}`. Each
message becomes one turn,

    <|role|>content<|end|>

the markers being special tokens of the vocabulary (nanogpt/tokenizer.py's CHAT_TOKENS) and the content encoded as
plain text: text that looks like a marker stays text, so no message can forge a turn. The prompt for a reply
ends with `<|assistant|>`; the model answers and closes its turn with `<|end|>`. In training the loss is taken on
what the model must learn to write: every token of an assistant's content and the `<|end|>` that closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nanogpt.errors import UserError
from nanogpt.tokenizer import CHAT_TOKENS, GPT2Tokenizer, Tokenizer

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS
_MARKERS = dict(zip(ROLES, (SYSTEM, USER, ASSISTANT), strict=True))

# The same rendering in Jinja, as Hugging Face's tokenizers read it (tokenizer_config.json's chat_template); it
# relies on the markers being special tokens of the exported tokenizer, which export.py makes them.
JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def check_conversation(messages: Any, where: str = "the conversation", need_reply: bool = False) -> list[dict]:
    """`messages` as a list of {"role", "content"} dicts, or one line saying what is wrong with it; `need_reply`:
    it must hold an assistant turn (a conversation to learn from)."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where} is not a list of messages: give [{{'role': 'user', 'content': ...}}, ...]")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}, message {i}: not a {{'role': ..., 'content': ...}} object: {str(m)[:80]!r}")
        if m["role"] not in ROLES:
            raise UserError(f"{where}, message {i}: unknown role {m['role']!r}: use system, user or assistant")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise UserError(f"{where}, message {i} ({m['role']}): empty content: every message needs text")
    if need_reply and not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where} has no assistant turn: there is nothing to learn from it")
    return messages


@dataclass(frozen=True)
class ChatTemplate:
    """The template over one tokenizer: its marker ids and the encoding of conversations."""

    tokenizer: Tokenizer
    ids: dict[str, int]  # marker text -> id

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The template for `tokenizer`, or one line saying why it cannot hold conversations."""
        special = tokenizer.special_tokens
        missing = [t for t in CHAT_TOKENS if t not in special]
        if missing and tokenizer.eot_token is None:
            raise UserError(
                "a character-level vocabulary has no chat tokens: chat needs a BPE vocabulary (GPT-2's, "
                "data.tokenizer=gpt2, or a trained one, data.tokenizer=bpe)"
            )
        if missing and isinstance(tokenizer, GPT2Tokenizer):
            raise UserError(
                "this is a base model: its GPT-2 vocabulary has no chat tokens; finetune it on conversations "
                "(python run.py experiment=sft init_from=<run dir or gpt2>) to chat with it"
            )
        if missing:
            raise UserError(
                f"this vocabulary has no chat tokens ({', '.join(missing)}): its BPE was trained before they were "
                "reserved; prepare the data set again (force=true) to train one that reserves them"
            )
        return cls(tokenizer, {t: special[t] for t in CHAT_TOKENS})

    @property
    def end(self) -> int:
        """The id that closes a turn: generation of a reply stops there."""
        return self.ids[END]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a reply: `<|end|>`, and end-of-text where the vocabulary has it."""
        eot = self.tokenizer.eot_token
        return (self.end,) if eot is None else (self.end, eot)

    def encode(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, continue_final: bool = False
    ) -> tuple[list[int], list[int]]:
        """The tokens of a (checked) conversation and their loss mask: 1 where a token is one the model must learn
        to write (an assistant's content and its closing `<|end|>`), 0 elsewhere. `add_generation_prompt` ends it
        with `<|assistant|>`, the prompt for the next reply; `continue_final` leaves the last turn open (no
        `<|end|>`), a reply begun for the model to go on with, as Hugging Face's `continue_final_message` does."""
        ids: list[int] = []
        mask: list[int] = []
        for m in messages:
            content = self.tokenizer.encode_ordinary(m["content"])
            learn = int(m["role"] == "assistant")
            ids += [self.ids[_MARKERS[m["role"]]], *content, self.end]
            mask += [0, *[learn] * len(content), learn]
        if continue_final and messages:
            ids.pop()
            mask.pop()
        if add_generation_prompt:
            ids.append(self.ids[ASSISTANT])
            mask.append(0)
        return ids, mask

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        """The tokens asking for the next assistant reply to `messages`."""
        return self.encode(messages, add_generation_prompt=True)[0]

    def render(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, continue_final: bool = False
    ) -> str:
        """The conversation as text, markers written out: what JINJA renders for Hugging Face (`encode`'s options)."""
        text = "".join(f"{_MARKERS[m['role']]}{m['content']}{END}" for m in messages)
        if continue_final and messages:
            text = text[: -len(END)]
        return text + (ASSISTANT if add_generation_prompt else "")
