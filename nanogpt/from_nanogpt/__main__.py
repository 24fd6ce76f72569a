"""`python -m nanogpt.from_nanogpt config/train_shakespeare_char.py --device=cpu --compile=False`: nanoGPT's
train.py command line as ours. Prints the run.py command; `--write conf/experiment/<name>.yaml` writes it as an
experiment preset instead (never over an existing file)."""

from __future__ import annotations

import os
import shlex
import sys

from nanogpt.atomic import atomic_write
from nanogpt.errors import UserError, exit_on_user_error
from nanogpt.from_nanogpt.config_file import Converted, convert

GROUPS = ("data", "logger")  # overrides that choose a config group's option, not a value


def preset(conv: Converted, source: str) -> str:
    """The overrides as a `conf/experiment/` YAML file: the groups in its defaults list, the values nested."""
    groups = [o.split("=", 1) for o in conv.overrides if o.split("=", 1)[0] in GROUPS]
    lines = ["# @package _global_", f"# converted from nanoGPT: {source}", "defaults:"]
    lines += [f"  - override /{g}: {v}" for g, v in groups]
    nested: dict[str, list[str]] = {}
    for o in conv.overrides:
        key, value = o.split("=", 1)
        if key in GROUPS:
            continue
        head, _, tail = key.partition(".")
        if not tail:
            lines.append(f"{key}: {value}") if key != "resume" else None
            continue
        nested.setdefault(head, []).append(f"  {tail}: {value}")
    lines.append("")
    for head, items in nested.items():
        lines += [f"{head}:", *items, ""]
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str]) -> None:
    write = None
    args = []
    it = iter(argv)
    for arg in it:
        if arg == "--write" or arg.startswith("--write="):
            write = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not write:
                raise UserError("--write needs a path: --write conf/experiment/<name>.yaml")
        else:
            args.append(arg)
    if not args:
        raise UserError("give nanoGPT's arguments: python -m nanogpt.from_nanogpt config/<name>.py [--key=value ...]")
    conv = convert(args)
    for note in conv.notes:
        print(f"note: {note}", file=sys.stderr)
    if write is None:
        print(shlex.join(["python", "run.py", *conv.overrides]))
        return
    if os.path.exists(write):
        raise UserError(f"{write} exists: give --write another path, or remove it first")
    if any(o.startswith("resume=") for o in conv.overrides):
        raise UserError("init_from='resume' continues one run: run the printed command instead of writing a preset")
    atomic_write(write, preset(conv, " ".join(args)).encode())
    name = os.path.splitext(os.path.basename(write))[0]
    print(f"wrote {write}: python run.py experiment={name}")


if __name__ == "__main__":
    main(sys.argv[1:])
