"""HellaSwag (Zellers et al. 2019): pick the right ending of an everyday-situation context among four.

Data: the validation split of the original repository, `hellaswag_val.jsonl` (10,042 examples, one JSON object a
line; we read `ctx`, `endings` (4 strings) and `label` (0-3)), downloaded once into <data_dir>/hellaswag/, or a
local copy given as `eval.hellaswag_file`.

Scoring, as build-nanogpt and llm.c do it: each ending is appended to the context after a space, the model's
cross-entropy is summed over the ending's tokens only, and the example counts as right when the true ending has
the lowest sum (`acc`) or the lowest mean per token (`acc_norm`). OpenAI's GPT-2 124M scores acc 0.2859,
acc_norm 0.2955 this way. lm-evaluation-harness's `hellaswag` task differs (it prefixes the activity label, cleans
the text and normalises by characters), so its acc_norm for the same model is 0.3114: compare one scorer's numbers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.request
from dataclasses import dataclass

import torch

from nanogpt import distributed
from nanogpt.atomic import atomic_write
from nanogpt.config import TasksConfig
from nanogpt.errors import UserError
from nanogpt.eval import TaskResult
from nanogpt.eval.scoring import Row, Scorer, batches, evaluating

log = logging.getLogger("nanogpt")

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
N_VAL = 10042
VERSION = "nanogpt-1"  # the scoring above, on the original validation split


@dataclass
class Example:
    ctx: str
    endings: list[str]
    label: int


@dataclass
class Scores:
    """One example's four endings: summed losses and token counts, as scored."""

    losses: list[float]
    tokens: list[int]
    label: int
    cropped: bool

    @property
    def pred(self) -> int:
        return min(range(4), key=lambda i: self.losses[i])

    @property
    def pred_norm(self) -> int:
        return min(range(4), key=lambda i: self.losses[i] / max(self.tokens[i], 1))


def default_file(data_dir: str) -> str:
    return os.path.join(data_dir, "hellaswag", "hellaswag_val.jsonl")


def load(settings: TasksConfig, data_dir: str, limit: int | None, dist: distributed.Dist) -> list[Example]:
    """The first `limit` (else all) validation examples, from `eval.hellaswag_file` or the cached download (made
    by the first process if missing; the others wait for it)."""
    path = settings.hellaswag_file
    if path is None:
        path = default_file(data_dir)
        failure = None
        if dist.is_main and not os.path.isfile(path):
            try:
                download(URL, path, expected=N_VAL)
            except UserError as e:
                failure = str(e)
        failure = distributed.broadcast(failure, dist)  # every process stops, not only the one that downloaded
        if failure is not None:
            raise UserError(failure)
    elif not os.path.isfile(path):
        raise UserError(f"eval.hellaswag_file={path!r} does not exist: give the path of hellaswag_val.jsonl ({URL})")
    with open(path, "rb") as f:
        examples = parse(f.read(), path)
    return examples[:limit] if limit is not None else examples


def download(url: str, dest: str, expected: int | None = None) -> None:
    """Fetch `url` into `dest` all at once, after checking it is HellaSwag (and holds `expected` examples, when
    given): a kill or an error leaves nothing."""
    log.info("downloading HellaSwag's validation split from %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors; ValueError: not a URL
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"cannot download HellaSwag from {url} ({reason}): fetch hellaswag_val.jsonl where there is network "
            "and pass eval.hellaswag_file=<path>"
        ) from None
    examples = parse(payload, url)
    if expected is not None and len(examples) != expected:
        raise UserError(f"{url} gave {len(examples)} examples, not {expected}: the download was cut short; try again")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    atomic_write(dest, payload)


def parse(payload: bytes, source: str) -> list[Example]:
    """The examples of a hellaswag_val.jsonl, refused with the first bad line named."""
    examples = []
    hint = f"give eval.hellaswag_file=<a copy of hellaswag_val.jsonl> ({URL})"
    try:
        lines = payload.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{source} is not UTF-8 text, so not HellaSwag: {hint}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError:
            x = None
        if not _is_example(x):
            raise UserError(
                f"{source}:{number} is not a HellaSwag example (a JSON object with ctx, 4 endings and a label 0-3): "
                + hint
            )
        examples.append(Example(x["ctx"], x["endings"], int(x["label"])))
    if not examples:
        raise UserError(f"{source} holds no examples: {hint}")
    return examples


def _is_example(x: object) -> bool:
    if not isinstance(x, dict) or not isinstance(x.get("ctx"), str) or str(x.get("label")) not in ("0", "1", "2", "3"):
        return False  # the original has int labels; copies exported from Hugging Face's have "0".."3"
    endings = x.get("endings")
    return isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)


def rows(scorer: Scorer, ex: Example) -> tuple[list[Row], bool]:
    """The 4 rows of an example (context, then " " + ending), and whether any had to be cropped."""
    ctx = scorer.encode(ex.ctx)
    out = [scorer.row(ctx, scorer.encode(" " + ending)) for ending in ex.endings]
    return [r for r, _ in out], any(c for _, c in out)


def score_each(scorer: Scorer, examples: list[Example], n_batches: int | None = None) -> list[Scores]:
    """Every example's scores, in order. Examples are batched longest first (less padding), with an example's
    4 endings in one forward; `n_batches` pads the run with throw-away forwards up to that many, so that every
    process of a sharded model runs the same number of them."""
    prepared = [rows(scorer, ex) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -max(len(r.tokens) for r in prepared[i][0]))
    per_batch = max(1, scorer.batch_size // 4)
    out: list[Scores | None] = [None] * len(examples)
    done = 0
    with evaluating(scorer.model):
        for chunk in batches(order, per_batch):
            sums, _ = scorer.score([r for i in chunk for r in prepared[i][0]])
            for k, i in enumerate(chunk):
                four = prepared[i][0]
                losses = [-s for s in sums[4 * k : 4 * k + 4]]
                out[i] = Scores(losses, [r.n_cont for r in four], examples[i].label, prepared[i][1])
            done += 1
        for _ in range(done, n_batches or 0):
            scorer.score([Row([0, 0], 1)])  # another process still has a batch: its forward needs ours
    return [s for s in out if s is not None]


def score(scorer: Scorer, examples: list[Example]) -> TaskResult:
    """acc and acc_norm over `examples`; each process scores every world_size-th example, then the counts are summed."""
    dist = scorer.dist
    mine = examples[dist.rank :: dist.world_size]
    per_process = math.ceil(len(examples) / dist.world_size)
    dropped_before = scorer.dropped_chars
    scored = score_each(scorer, mine, n_batches=math.ceil(per_process / max(1, scorer.batch_size // 4)))
    right = sum(s.pred == s.label for s in scored)
    right_norm = sum(s.pred_norm == s.label for s in scored)
    cropped = sum(s.cropped for s in scored)
    mine_counts = [right, right_norm, len(scored), cropped, scorer.dropped_chars - dropped_before]
    counts = torch.tensor(mine_counts, dtype=torch.long, device=scorer.device)
    if dist.enabled:
        torch.distributed.all_reduce(counts)
    right, right_norm, n, cropped, dropped = (int(c) for c in counts.tolist())
    details = {"cropped": cropped, "dropped_chars": dropped}
    return TaskResult({"acc": right / n, "acc_norm": right_norm / n}, VERSION, n, details)
