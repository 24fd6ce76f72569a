"""chat.py's conversation: a chat run answering in turns, its reply streamed token by token.

The conversation is rendered by the chat template (nanogpt/chat/template.py) at every turn. It must fit the model's
context with room for a reply: the oldest turns are dropped first (the system message stays), with a notice. Lines
starting with `/` are commands (HELP); Ctrl-C stops a reply and keeps what was written of it; Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import torch

from nanogpt.atomic import atomic_write
from nanogpt.chat.template import ChatTemplate
from nanogpt.config import ChatConfig, SampleConfig
from nanogpt.kernels import decode_layout
from nanogpt.sampling import generation_precision, generation_weights, load_for_sampling, print_stream

HELP = "/reset forgets the conversation, /system <text> sets the system message, /save <file> writes it as JSON, /quit"


class Conversation:
    """A chat model and the messages so far; `reply` streams the next answer to `out`."""

    def __init__(self, cfg: ChatConfig, out: TextIO = sys.stdout):
        self.cfg, self.out = cfg, out
        self.precision = generation_precision(cfg.device)
        model, tokenizer, self.vocab = load_for_sampling(SampleConfig(run=cfg.run, checkpoint=cfg.checkpoint))
        self.template = ChatTemplate.of(tokenizer)  # a base model's vocabulary has no markers: one line, exit 2
        self.model = model.eval().to(self.precision.device)
        self.autocast = generation_weights(self.model, self.precision)
        self.generator = torch.Generator(device=self.precision.device).manual_seed(cfg.seed)
        self.system = cfg.system
        self.turns: list[dict] = []  # user and assistant messages, oldest first

    @property
    def messages(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] * bool(self.system) + self.turns

    def reply(self, text: str) -> str:
        """Answer `text`: the reply is printed as it is generated and kept in the conversation."""
        self.turns.append({"role": "user", "content": text})
        prompt = self._fit()
        if prompt is None:
            self.turns.pop()
            self.say(
                f"(that message does not fit the model's {self.model.config.block_size}-token context: shorten it)"
            )
            return ""
        room = min(self.cfg.max_new_tokens, self.model.config.block_size - len(prompt))
        x = torch.tensor([prompt], dtype=torch.long, device=self.precision.device)
        pieces: list[int] = []
        try:
            with self.autocast(), decode_layout(self.model):
                stream = self.model.generate_stream(
                    x, room, temperature=self.cfg.temperature, top_k=self.cfg.top_k, top_p=self.cfg.top_p,
                    vocab_limit=self.vocab, generator=self.generator,
                )  # fmt: skip
                ids = itertools.takewhile(lambda t: t not in self.template.stop_ids, (int(t) for t in stream))
                print_stream(_kept(ids, pieces), self.template.tokenizer, None, self.out)
        except KeyboardInterrupt:
            self.out.write(" (stopped)")
        self.out.write("\n")
        self.out.flush()
        answer = self.template.tokenizer.decode(pieces)
        self.turns.append({"role": "assistant", "content": answer or " "})
        return answer

    def _fit(self) -> list[int] | None:
        """The prompt for the next reply, the oldest turns dropped until it leaves room for one; None when the last
        message alone leaves none."""
        block = self.model.config.block_size
        room = min(self.cfg.max_new_tokens, block // 2)
        dropped = 0
        while len(prompt := self.template.prompt(self.messages)) > block - room and len(self.turns) > 1:
            del self.turns[: 2 if len(self.turns) > 2 else 1]  # a user turn and its answer
            dropped += 1
        if dropped:
            self.say(f"(dropped the oldest {dropped} exchange(s) to keep the conversation within {block} tokens)")
        return prompt if len(prompt) < block else None

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def command(self, line: str) -> bool:
        """Run a `/command`; False when it asks to leave."""
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.turns = []
            self.say("(conversation reset)")
        elif name == "/system":
            self.system = arg.strip() or None
            self.say(f"(system message {'set' if self.system else 'removed'})")
        elif name == "/save" and arg.strip():
            body = json.dumps({"messages": self.messages}, indent=1, ensure_ascii=False) + "\n"
            try:
                atomic_write(arg.strip(), body.encode("utf-8"))
                self.say(f"(saved {len(self.messages)} messages to {arg.strip()})")
            except OSError as e:
                self.say(f"(could not save to {arg.strip()}: {e.strerror})")
        else:
            self.say(HELP)
        return True


def _kept(ids: Iterator[int], kept: list[int]) -> Iterator[int]:
    """`ids`, each also appended to `kept`: what was written of a reply when Ctrl-C stops it."""
    for t in ids:
        kept.append(t)
        yield t


def chat(cfg: ChatConfig, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """`prompt=...`: one reply, then return. Else the REPL, until Ctrl-D or /quit."""
    conversation = Conversation(cfg, out)
    if cfg.prompt is not None:
        conversation.reply(cfg.prompt)
        return
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    conversation.say(f"chatting with {cfg.run} ({HELP}; Ctrl-C stops a reply)")
    while True:
        try:
            line = read("> ").strip()
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            conversation.say("\n(Ctrl-D or /quit leaves)")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not conversation.command(line):
                return
            continue
        conversation.reply(line)
