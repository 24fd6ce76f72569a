"""lm-evaluation-harness on our models, no export: an `lm_eval.api.model.LM` over our GPT and our tokenizers.

So every run we can train is scored by the harness's own tasks, including models Hugging Face's GPT-2 cannot
hold (rotary, QK-norm, ReLU²) and character-level ones. The three request types:

- `loglikelihood(context, continuation)`: the continuation's log-probability and whether greedy decoding gives
  it. Encoded as the harness's own models do (trailing spaces of the context move to the continuation; the two
  are tokenized together and split after the context's tokens), cropped on the left to the block, and batched
  longest first (nanogpt/eval/scoring.py). An empty context is the end-of-text token.
- `loglikelihood_rolling(text)`: the whole text's log-probability in block-sized windows, each token predicted
  once, with the harness's own window rule.
- `generate_until(context, kwargs)`: greedy (or sampled) continuations with our KV cache until a stop sequence or
  `max_gen_toks`, contexts cropped on the left to leave room for them. Our model has no padding mask, so a batch
  holds contexts of equal token length (one request otherwise).

With `chat=true` the harness builds each prompt as messages and asks `apply_chat_template` for its text: our
template (nanogpt/chat/template.py) renders it, and the adapter remembers the rendered text's token ids, so a
request for that text is encoded as the template encodes it (markers as special tokens, content as plain text)
rather than re-tokenized; replies end at the template's `<|end|>`.

Character-level models have no end-of-text token: a newline stands in for it where the vocabulary has one, else
the text's first token is context only. Characters outside their vocabulary are dropped and counted.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections import defaultdict
from typing import Any

import torch

from nanogpt.chat.template import JINJA, ChatTemplate
from nanogpt.config import EvalConfig
from nanogpt.errors import UserError
from nanogpt.eval.scoring import Scorer, batches, evaluating
from nanogpt.kernels import decode_layout
from nanogpt.model import GPT

try:
    from lm_eval.api.model import LM
except ImportError:  # the optional extra is missing: check_tasks says which pip install brings it
    LM = object  # type: ignore[assignment,misc]

log = logging.getLogger("nanogpt")

INSTALL = 'pip install -e ".[eval]"'


def check_tasks(names: list[str]) -> Any:
    """The harness's TaskManager holding `names` (task, group or tag names, or task YAML files); refuses a name it
    does not know, or the harness missing, with one line."""
    if LM is object:
        raise UserError(f"harness={names} needs lm-evaluation-harness, which is not installed: {INSTALL}")
    from lm_eval.tasks import TaskManager

    files = [n for n in names if n.endswith((".yaml", ".yml"))]
    for path in files:
        if not os.path.isfile(path):
            raise UserError(f"harness: task file {path!r} does not exist: give a task name or an existing YAML")
    named = [n for n in names if n not in files]
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p in files})
    # Indexing the harness's own ~15k task files takes seconds: only when a task is asked for by name.
    manager = TaskManager(include_path=folders or None, include_defaults=bool(named))
    for name in named:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UserError(f"harness: unknown task {name!r}: {hint}`lm-eval ls tasks` lists them, or give a task YAML")
    return manager


def check_generation(manager: Any, names: list[str], block_size: int, default_max: int) -> None:
    """Refuse, before anything is scored, a generation task whose longest answer leaves no room in the block for a
    context. The tasks the index knows whole (not a group's members) are checked here; `generate_until` checks
    every request again."""
    files = {os.path.abspath(n) for n in names}
    for name, entry in manager.task_index.items():
        cfg = entry.cfg or {}
        asked = name in names or (entry.yaml_path is not None and str(entry.yaml_path) in files)
        if asked and cfg.get("output_type") == "generate_until":
            kwargs = cfg.get("generation_kwargs") or {}
            _check_room(name, int(kwargs.get("max_gen_toks") or default_max), block_size)


def _check_room(task: str, max_gen_toks: int, block_size: int) -> int:
    """The context tokens left beside `max_gen_toks` new ones in the block; refused when none are."""
    if max_gen_toks >= block_size:
        raise UserError(
            f"harness task {task!r} generates up to {max_gen_toks} tokens, but this model's block_size is "
            f"{block_size}: evaluate a model with a longer block, or lower eval.max_gen_tokens where the task leaves "
            "the length open"
        )
    return block_size - max_gen_toks


def score(scorer: Scorer, cfg: EvalConfig, manager: Any) -> dict[str, Any]:
    """The harness's results per task: {"metrics": {...}, "version": ..., "examples": n}; {} on other processes."""
    from lm_eval import simple_evaluate

    template = ChatTemplate.of(scorer.tokenizer) if cfg.chat else None
    lm = NanoGPTLM(scorer, cfg.eval.max_gen_tokens, cfg.seed, template)
    dropped_before = scorer.dropped_chars
    out = simple_evaluate(
        model=lm,
        tasks=list(cfg.harness),
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        task_manager=manager,
        log_samples=False,
        apply_chat_template=cfg.chat,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
    )
    if out is None:
        return {}
    tasks = {}
    for name, values in out["results"].items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            metric, _, filtered = key.partition(",")  # "acc,none": the metric, unfiltered
            if isinstance(value, bool) or not isinstance(value, (int, float)) or metric == "sample_len":
                continue
            named = metric if filtered in ("", "none") else key
            if metric.endswith("_stderr"):
                stderr[named.replace("_stderr", "", 1)] = value
            else:
                metrics[named] = value
        examples = out.get("n-samples", {}).get(name, {}).get("effective")
        version = out.get("versions", {}).get(name)
        tasks[name] = {"metrics": metrics, "stderr": stderr, "version": version, "examples": examples}
    if scorer.dropped_chars > dropped_before:
        dropped = scorer.dropped_chars - dropped_before
        log.warning("harness: %d characters outside the model's vocabulary were left out of the text", dropped)
    return tasks


class NanoGPTLM(LM):
    """The harness's view of a `Scorer`: text in, log-likelihoods and generations out."""

    def __init__(
        self, scorer: Scorer, max_gen_tokens: int = 256, seed: int = 1234, template: ChatTemplate | None = None
    ):
        super().__init__()
        self.scorer = scorer
        self.template = template  # chat=true: prompts through it, replies end at its <|end|>
        self.rendered: dict[str, list[int]] = {}  # text apply_chat_template returned -> the template's ids for it
        self.max_gen_tokens = max_gen_tokens
        self.generator = torch.Generator(device=scorer.device).manual_seed(seed)
        self._rank, self._world_size, self._device = scorer.dist.rank, scorer.dist.world_size, scorer.device
        eot = scorer.tokenizer.eot_token
        newline = scorer.encode("\n") if eot is None else []
        self.prefix: int | None = eot if eot is not None else (newline[0] if len(newline) == 1 else None)

    # ---- the chat template (the harness calls these with apply_chat_template=True) ----

    @property
    def tokenizer_name(self) -> str:
        """Part of the harness's request-cache key: the vocabulary and the template."""
        tokenizer = self.scorer.tokenizer
        return f"nanogpt-{tokenizer.to_meta().get('kind', 'unknown')}{tokenizer.vocab_size}-chat"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return JINJA if self.template is not None else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The harness's messages as our template renders them. Without a generation prompt the harness has begun
        the reply itself (a task's `gen_prefix`): that last turn is left open for the model to continue."""
        if self.template is None:
            raise RuntimeError("NanoGPTLM was built without a chat template: give it template=ChatTemplate.of(...)")
        messages = [{"role": m["role"], "content": m["content"]} for m in chat_history]
        options = {"add_generation_prompt": add_generation_prompt, "continue_final": not add_generation_prompt}
        text = self.template.render(messages, **options)
        self.rendered[text] = self.template.encode(messages, **options)[0]
        return text

    def _context(self, text: str) -> list[int]:
        """The ids of a request's context: the template's own for a prompt it rendered, else the text encoded."""
        ids = self.rendered.get(text)
        return list(ids) if ids is not None else self.scorer.encode(text)

    # ---- log-likelihoods ----

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args) for r in requests]
        results = self._score(pairs)
        for r, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for i, r in enumerate(requests):
            ids = self.scorer.encode(r.args[0])
            prefix = self.prefix
            if prefix is None and ids:
                prefix, ids = ids[0], ids[1:]  # nothing to condition the first character on: it is context only
            for window in get_rolling_token_windows(ids, prefix, self.scorer.block_size, context_len=1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._score(windows), strict=True):
            totals[i] += logprob
        for r, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context in self.rendered:  # the template's ids, never re-tokenized; the answer follows them as text
            return self._context(context), self.scorer.encode(continuation)
        if not context:
            cont = self.scorer.encode(continuation)
            if self.prefix is not None and (not cont or cont[0] != self.prefix):
                return [self.prefix], cont
            return cont[:1], cont[1:]
        spaces = len(context) - len(context.rstrip())
        if spaces:  # "Answer: " + "yes" is scored as "Answer:" + " yes", the way BPE splits words
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.scorer.encode(context + continuation)
        n_ctx = len(self.scorer.encode(context))
        return whole[:n_ctx], whole[n_ctx:]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each (context, continuation), batched longest first."""
        rows = [self.scorer.row(ctx, cont)[0] for ctx, cont in pairs]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        todo = [i for i in order if rows[i].n_cont > 0]  # an empty continuation has probability 1
        with evaluating(self.scorer.model):
            for chunk in batches(todo, self.scorer.batch_size):
                sums, greedy = self.scorer.score([rows[i] for i in chunk])
                for i, s, g in zip(chunk, sums, greedy, strict=True):
                    results[i] = (s, g)
        return results

    # ---- generation ----

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import normalize_gen_kwargs

        groups: dict[tuple, list[tuple[int, list[int]]]] = defaultdict(list)
        settings = {}
        for i, r in enumerate(requests):
            context, raw = r.args
            kwargs = normalize_gen_kwargs(raw, self.max_gen_tokens)
            room = _check_room(getattr(r, "task_name", "?"), kwargs["max_gen_toks"], self.scorer.block_size)
            ids = self._context(context)[-room:] or ([self.prefix] if self.prefix is not None else [0])
            key = json.dumps(kwargs, sort_keys=True, default=str)
            settings[key] = kwargs
            groups[(key, len(ids))].append((i, ids))
        out = [""] * len(requests)
        with evaluating(self.scorer.model):
            for (key, _), members in groups.items():
                for chunk in batches(members, self.scorer.batch_size):
                    texts = self._generate([ids for _, ids in chunk], settings[key])
                    for (i, _), text in zip(chunk, texts, strict=True):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts: list[list[int]], kwargs: dict[str, Any]) -> list[str]:
        """Continue each context (all of one length) until one of `until` appears or max_gen_toks tokens."""
        tokenizer = self.scorer.tokenizer
        stops = set(self.template.stop_ids) if self.template is not None else {tokenizer.eot_token}
        until = [s for s in kwargs.get("until") or [] if s]
        model: GPT = self.scorer.model  # type: ignore[assignment]
        x = torch.tensor(contexts, dtype=torch.long, device=self.scorer.device)
        new: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        with self.scorer.autocast(), decode_layout(model):
            stream = model.generate_stream(
                x,
                kwargs["max_gen_toks"],
                temperature=float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0,
                top_k=kwargs.get("top_k"),
                top_p=kwargs.get("top_p"),
                vocab_limit=self.scorer.vocab_size,
                generator=self.generator,
            )
            for step in stream:
                for b, token in enumerate(step[:, 0].tolist()):
                    if done[b]:
                        continue
                    if token in stops:
                        done[b] = True
                        continue
                    new[b].append(token)
                    done[b] = any(s in tokenizer.decode(new[b]) for s in until)
                if all(done):
                    break
        texts = [tokenizer.decode(ids) for ids in new]
        return [_cut(text, until) for text in texts]

    # ---- several processes (torchrun): the harness shards requests and gathers results through these ----

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size == 1:
            return [obj]
        parts = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, parts, dst=dst)
        return parts

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _cut(text: str, until: list[str]) -> str:
    """The text before the first stop sequence."""
    for stop in until:
        text = text.split(stop)[0]
    return text
