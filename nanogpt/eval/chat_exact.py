"""chat_exact: exact-match accuracy of a chat model's answers to held-out questions, generated through the chat
template (nanogpt/chat/template.py) as chat.py would ask them. The CPU demonstration's task (docs/chat.md).

Data: JSON lines of {"messages": [... , {"role": "assistant", "content": <the answer>}]}; the model is prompted with
every turn before the last and answers greedily until it closes its turn (`<|end|>`) or runs out of room; it is
right when its answer, stripped of surrounding white space, is exactly the last turn's content. By default the
held-out questions of the demonstration's data set (`prepare.py data=chat_reverse` writes them,
<data_dir>/chat_reverse/heldout.jsonl); any other file through `eval.chat_exact_file`. A model that never saw the
task scores 0; the demonstration's finetuned one, see docs/chat.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from nanogpt import distributed
from nanogpt.chat.template import ChatTemplate, check_conversation
from nanogpt.config import TasksConfig
from nanogpt.errors import UserError
from nanogpt.eval import TaskResult
from nanogpt.eval.scoring import Scorer, evaluating

VERSION = "nanogpt-1"
MAX_ANSWER_TOKENS = 64  # an answer longer than this is wrong: the demonstration's answers are a few tokens


@dataclass
class Example:
    messages: list[dict]  # the conversation up to the question
    answer: str


def default_file(data_dir: str) -> str:
    return os.path.join(data_dir, "chat_reverse", "heldout.jsonl")


def load(settings: TasksConfig, data_dir: str, limit: int | None, dist: distributed.Dist) -> list[Example]:
    """The first `limit` (else all) held-out conversations, each ending in the answer to match."""
    path = settings.chat_exact_file or default_file(data_dir)
    if not os.path.isfile(path):
        raise UserError(
            f"{path} does not exist: prepare the demonstration's data (python prepare.py data=chat_reverse "
            "paths.data_dir=...) or give eval.chat_exact_file=<conversations .jsonl>"
        )
    examples = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            where = f"{path}, line {i + 1}"
            try:
                record = json.loads(line)
            except ValueError:
                raise UserError(f"{where} is not JSON: give one {{'messages': [...]}} object a line") from None
            messages = check_conversation(record.get("messages") if isinstance(record, dict) else None, where)
            if messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise UserError(f"{where} does not end in an assistant turn after a question: nothing to match")
            examples.append(Example(messages[:-1], messages[-1]["content"]))
    return examples[:limit] if limit is not None else examples


@torch.no_grad()
def answer(scorer: Scorer, template: ChatTemplate, messages: list[dict]) -> str:
    """The model's greedy reply to `messages`, up to the end of its turn."""
    prompt = template.prompt(messages)[-scorer.block_size :]
    room = min(MAX_ANSWER_TOKENS, scorer.block_size - len(prompt) + 1)
    if room < 1:
        return ""
    x = torch.tensor([prompt], dtype=torch.long, device=scorer.device)
    reply: list[int] = []
    with scorer.autocast():
        for t in scorer.model.generate_stream(x, room, temperature=0.0, vocab_limit=scorer.vocab_size):
            token = int(t)
            if token in template.stop_ids:
                break
            reply.append(token)
    return scorer.tokenizer.decode(reply)


def score(scorer: Scorer, examples: list[Example]) -> TaskResult:
    """Exact-match accuracy; each process answers every world_size-th example, then the counts are summed (not for
    FSDP's sharded model, whose forwards are collectives of equal number)."""
    dist = scorer.dist
    template = ChatTemplate.of(scorer.tokenizer)
    with evaluating(scorer.model):
        mine = [
            answer(scorer, template, ex.messages).strip() == ex.answer.strip()
            for ex in examples[dist.rank :: dist.world_size]
        ]
    counts = torch.tensor([sum(mine), len(mine)], dtype=torch.long, device=scorer.device)
    if dist.enabled:
        torch.distributed.all_reduce(counts)
    right, n = (int(c) for c in counts.tolist())
    return TaskResult({"acc": right / max(n, 1)}, VERSION, n)
