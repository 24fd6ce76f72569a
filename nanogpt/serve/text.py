"""Tokens -> the text a client may be shown, with stop strings cut out.

A byte-level BPE token can end inside a multi-byte character: bytes go through an incremental UTF-8 decoder, so
only whole characters are ever sent. Text that may be the start of a stop string is held back until it turns
out to be one (the reply ends before it) or not (it is sent)."""

from __future__ import annotations

import codecs

from nanogpt.tokenizer import Tokenizer


class TextStream:
    """The text of one sequence as its tokens arrive; `push` returns what can be sent now."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.shown = 0  # characters of `text` already sent

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token: (the text now safe to send, whether a stop string was generated)."""
        self.text += self.decoder.decode(self.tokenizer.token_bytes([token]))
        # Held-back text covers every possible start of a stop string, so none begins before `shown`.
        hits = [at for at in (self.text.find(s, self.shown) for s in self.stops) if at >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._send(len(self.text)), True
        return self._send(len(self.text) - self._held()), False

    def finish(self) -> str:
        """The rest of the text once generation ended without a stop string (an unfinished character: U+FFFD)."""
        self.text += self.decoder.decode(b"", final=True)
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        delta = self.text[self.shown : upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return delta

    def _held(self) -> int:
        """The length of the longest end of the text that begins some stop string (and so may grow into it)."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:k]):
                    best = k
                    break
        return best
