"""Synthetic conversations with exact answers, generated offline (`data.source=synthetic:<task>`): the data of the
CPU demonstration that supervised finetuning teaches a model to answer (docs/chat.md).

`reverse`: the user gives 3 lowercase letters separated by spaces, the assistant writes them in reverse order
(`reversed: ...`: a word before the letters on both sides, so each letter is the same token in the question and
the answer). Every question is distinct, so the held-out questions (the val split, also written as heldout.jsonl
for the `chat_exact` evaluation task) are never seen in training.
Deterministic: the same conversations on every machine.
"""

from __future__ import annotations

import string

import numpy as np

from nanogpt.errors import UserError

SEED = 7  # the generator's seed: a data set is a pure function of its settings
TASKS = ("reverse",)
LENGTHS = (3, 3)  # letters per question: short enough for a tiny model to learn on a CPU in seconds


def conversations(source: str, n: int) -> list[list[dict]]:
    """`n` distinct conversations of the task `source` names (synthetic:<task>)."""
    task = source.removeprefix("synthetic:")
    if task not in TASKS:
        raise UserError(
            f"data.source={source!r} is no synthetic task we have: use synthetic:{', synthetic:'.join(TASKS)}"
        )
    rng = np.random.default_rng(SEED)
    letters = np.array(list(string.ascii_lowercase))
    seen: set[str] = set()
    out = []
    while len(out) < n:
        word = letters[rng.integers(0, 26, size=int(rng.integers(LENGTHS[0], LENGTHS[1] + 1)))]
        question = " ".join(word)
        if question in seen:
            continue
        seen.add(question)
        out.append(
            [
                {"role": "user", "content": f"reverse: {question}"},
                {"role": "assistant", "content": "reversed: " + " ".join(word[::-1])},
            ]
        )
    return out
