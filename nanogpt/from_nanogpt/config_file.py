"""nanoGPT's configuration, read without executing it: its config/*.py files (literal assignments and arithmetic
on literals, parsed with `ast`), its `--key=value` flags (as its configurator.py reads them), and the table
mapping each of its train.py settings onto our keys.

The one piece of code nanoGPT's own config files use is `wandb_run_name = 'ft-' + str(time.time())` (after
`import time`), a name unique to each run: that is what our runs get by default, so it is read as such and any
other import or call is refused."""

from __future__ import annotations

import ast
import operator
import os
from dataclasses import dataclass, field
from typing import Any

from nanogpt.errors import UserError

# train.py's settings and their defaults (nanoGPT's GPT-2 124M on OpenWebText): the only keys a config file or
# flag may set. `dtype` defaults to bfloat16 or float16 by the GPU, which our device.dtype=auto decides likewise.
DEFAULTS: dict[str, Any] = dict(
    out_dir="out", eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False,
    always_save_checkpoint=True, init_from="scratch", wandb_log=False, wandb_project="owt",
    wandb_run_name="gpt2", dataset="openwebtext", gradient_accumulation_steps=5 * 8, batch_size=12,
    block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False, learning_rate=6e-4,
    max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0, decay_lr=True, warmup_iters=2000,
    lr_decay_iters=600000, min_lr=6e-5, backend="nccl", device="cuda", dtype="bfloat16", compile=True,
)  # fmt: skip

# nanoGPT key -> ours, value as it is.
SAME = {
    "eval_interval": "train.eval_interval", "log_interval": "train.log_interval", "eval_iters": "train.eval_iters",
    "eval_only": "train.eval_only", "always_save_checkpoint": "train.always_save_checkpoint",
    "gradient_accumulation_steps": "train.grad_accum", "batch_size": "train.batch_size",
    "max_iters": "train.max_iters", "block_size": "model.block_size", "n_layer": "model.n_layer",
    "n_head": "model.n_head", "n_embd": "model.n_embd", "dropout": "model.dropout", "bias": "model.bias",
    "learning_rate": "optim.lr", "weight_decay": "optim.weight_decay", "beta1": "optim.beta1",
    "beta2": "optim.beta2", "grad_clip": "optim.grad_clip", "warmup_iters": "optim.warmup_iters",
    "lr_decay_iters": "optim.lr_decay_iters", "decay_lr": "optim.decay_lr", "min_lr": "optim.min_lr",
    "wandb_project": "logger.project", "wandb_run_name": "logger.run_name",
}  # fmt: skip
# Only when given: nanoGPT's defaults (cuda, a GPU's half dtype, compile) are what device=auto picks on a GPU.
WHEN_GIVEN = {"device": "device.device", "dtype": "device.dtype", "compile": "device.compile"}
# Data sets we prepare ourselves under the same tokenizer, when nanoGPT's folder is not at hand.
DATASETS = {"shakespeare_char": "shakespeare_char", "shakespeare": "shakespeare", "openwebtext": "owt"}
UNMAPPED = {"backend": "the process group backend is nccl on GPUs and gloo on CPUs, chosen per device"}
GPT2_SHAPE = ("n_layer", "n_head", "n_embd", "bias")
UNIQUE = object()  # the value of `str(time.time())`: a name of its own for each run


@dataclass
class Converted:
    values: dict[str, Any]  # nanoGPT's settings after the config files and flags, defaults included
    given: set[str]  # the keys a config file or flag set
    overrides: list[str] = field(default_factory=list)  # run.py's key=value (and group=option) overrides
    notes: list[str] = field(default_factory=list)  # what does not carry over, and why


def read_file(path: str) -> dict[str, Any]:
    """The settings a nanoGPT config file assigns, in order; one line naming anything that is not data."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except OSError as e:
        raise UserError(f"cannot read config file {path} ({e.strerror}): give nanoGPT's config/<name>.py") from None
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not Python syntax ({e.msg}): fix the config file") from None
    values: dict[str, Any] = {}
    for stmt in tree.body:
        where = f"{path}:{stmt.lineno}"
        if isinstance(stmt, ast.Import) and [a.name for a in stmt.names] == ["time"]:
            continue  # only ever used for wandb_run_name (see the module's docstring)
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise UserError(
                f"{where}: `{ast.unparse(stmt).splitlines()[0]}` is code; a config file here may only assign "
                "literals (key = value), and is never executed"
            )
        key = stmt.targets[0].id
        values[key] = _literal(stmt.value, {**DEFAULTS, **values}, where)
    return values


_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip


def _literal(node: ast.expr, known: dict[str, Any], where: str) -> Any:
    """A constant, arithmetic of constants, or a setting assigned before (`lr_decay_iters = max_iters`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, known, where)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _literal(node.left, known, where), _literal(node.right, known, where)
        if UNIQUE in (left, right):
            return UNIQUE
        try:
            return _OPS[type(node.op)](left, right)
        except (TypeError, ZeroDivisionError) as e:
            raise UserError(f"{where}: `{ast.unparse(node)}` cannot be computed ({e})") from None
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if _is_time_call(node) or (_is_call(node, "str") and _is_time_call(node.args[0])):
        return UNIQUE
    raise UserError(
        f"{where}: `{ast.unparse(node)}` is code; a config file here may only assign literals and arithmetic on "
        "them, and is never executed"
    )


def _is_call(node: ast.expr, name: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == name
        and len(node.args) == 1
        and not node.keywords
    )


def _is_time_call(node: ast.expr) -> bool:
    f = getattr(node, "func", None)
    return (
        isinstance(node, ast.Call)
        and not node.args
        and isinstance(f, ast.Attribute)
        and f.attr == "time"
        and isinstance(f.value, ast.Name)
        and f.value.id == "time"
    )


def read_args(args: list[str]) -> tuple[dict[str, Any], set[str]]:
    """nanoGPT's command line, as its configurator.py reads it: config files, then `--key=value` flags, in order."""
    values, given = dict(DEFAULTS), set()
    for arg in args:
        if "=" not in arg:
            if arg.startswith("--"):
                raise UserError(f"{arg}: nanoGPT flags are --key=value; give a value, e.g. {arg}=...")
            file = read_file(arg)
            _check_keys(file, arg)
            values.update(file)
            given.update(file)
            continue
        if not arg.startswith("--"):
            raise UserError(f"{arg!r}: nanoGPT flags start with -- (--key=value)")
        key, raw = arg[2:].split("=", 1)
        _check_keys({key: None}, "the command line")
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw
        default = DEFAULTS[key]
        if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
            raise UserError(f"--{key}={raw}: nanoGPT's {key} is a {type(default).__name__}, e.g. --{key}={default!r}")
        values[key], given = value, given | {key}
    return values, given


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in DEFAULTS:
            raise UserError(
                f"{key} (in {where}) is not a setting of nanoGPT's train.py: check its spelling "
                f"(nanoGPT has {', '.join(sorted(DEFAULTS))})"
            )


def convert(args: list[str]) -> Converted:
    """run.py's overrides for a nanoGPT command line (`config/x.py --key=value ...`), run from nanoGPT's folder."""
    return convert_values(*read_args(args))


def convert_values(values: dict[str, Any], given: set[str]) -> Converted:
    """run.py's overrides for nanoGPT's settings `values` (all of train.py's), `given` the ones set explicitly."""
    out = Converted(values, given)
    pretrained = values["init_from"].startswith("gpt2")
    for key, ours in SAME.items():
        value = values[key]
        if pretrained and key in GPT2_SHAPE:
            continue  # GPT-2's own shape, as nanoGPT's from_pretrained forces it; block_size and dropout apply
        if key == "wandb_run_name" and value is UNIQUE:
            out.notes.append("wandb_run_name from time.time(): each run here is named by its own run dir already")
            continue
        if key == "wandb_run_name" and key not in given:
            continue
        out.overrides.append(f"{ours}={_yaml(value)}")
    out.overrides += [f"{WHEN_GIVEN[k]}={_yaml(values[k])}" for k in WHEN_GIVEN if k in given]
    if not pretrained:
        out.overrides.append("model.activation=gelu_exact")  # nanoGPT's MLP is nn.GELU(), the erf form
    else:
        out.notes.append("GPT-2's weights run here with GPT-2's own tanh GELU (nanoGPT's model uses the erf form)")
    _special(values, given, out)
    return out


def _special(values: dict[str, Any], given: set[str], out: Converted) -> None:
    """The settings that are not one key of ours each: data set, init, run name, logger, the constant lr."""
    out.overrides.insert(0, f"name={os.path.basename(os.path.normpath(values['out_dir']))}")
    folder = os.path.join("data", values["dataset"])
    if os.path.isfile(os.path.join(folder, "train.bin")):
        out.overrides[1:1] = ["data=nanogpt", f"data.dir={folder}"]
    elif values["dataset"] in DATASETS:
        out.overrides.insert(1, f"data={DATASETS[values['dataset']]}")
        out.notes.append(f"no {folder}/train.bin here: data={DATASETS[values['dataset']]} prepares it afresh")
    else:
        out.overrides[1:1] = ["data=nanogpt", f"data.dir={folder}"]
    init = values["init_from"]
    if init == "resume":
        out.overrides.append(f"resume={values['out_dir']}")
    elif init != "scratch":
        out.overrides.append(f"init_from={init}")
    if values["wandb_log"]:
        out.overrides.insert(1, "logger=wandb")
    if not values["decay_lr"]:
        # nanoGPT's constant lr has no warmup either; our min_lr must not exceed the lr even when unused.
        out.overrides = [o for o in out.overrides if not o.startswith(("optim.warmup_iters=", "optim.min_lr="))]
        out.overrides += [
            "optim.warmup_iters=0",
            f"optim.min_lr={_yaml(min(values['min_lr'], values['learning_rate']))}",
        ]
    out.notes += [f"{k}={values[k]!r} is not used: {why}" for k, why in UNMAPPED.items() if k in given]


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if any(c in value for c in " ,=[]{}'\"") else value
    return repr(value)


def resume_overrides(saved: dict[str, Any], out_dir: str) -> list[str]:
    """The loop, model and optimizer settings a nanoGPT checkpoint's `config` records, as run.py's overrides, and
    its data folder when it is found (under the working dir or beside out_dir, as nanoGPT's data/<dataset>). The
    device settings are left to this machine."""
    values = {**DEFAULTS, **{k: v for k, v in saved.items() if k in DEFAULTS}, "init_from": "scratch"}
    conv = convert_values(values, set(saved) & set(DEFAULTS))
    kept = [o for o in conv.overrides if o.split("=", 1)[0].split(".")[0] in ("train", "model", "optim")]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(out_dir)))
    for root in (".", repo):
        folder = os.path.abspath(os.path.join(root, "data", str(values["dataset"])))
        if os.path.isfile(os.path.join(folder, "train.bin")):
            return [*kept, "data.name=nanogpt", f"data.dir={folder}"]
    return kept
