"""Free text on the command line: `start=床前明月光`, `stop=<|endoftext|>`, `data.source=/data/文本.txt`.

Hydra's override grammar takes an unquoted value only when it is made of ASCII letters, digits, spaces and a few
symbols; anything else (any non-ASCII character, `'`, `#`, `!`, `<`, `&`, ...) is refused with "token recognition
error", and the user has to type the value inside Hydra's quotes, inside the shell's (`start="'床前明月光'"`).
Before Hydra reads sys.argv, each `key=value` override that the grammar refuses is rewritten into its quoted
form, provided that form parses back to exactly the text typed. Overrides the grammar accepts (sweeps `a=1,2`,
lists, interpolations, function calls) are never touched, and nor is anything that is not `key=value`; except that
in a single run (no `-m`), where a comma cannot mean a sweep, text with a comma (`start="Hello, world"`) is quoted
as text rather than refused as an ambiguous sweep. Numbers (`optim.lr=1e-3,3e-3`) and config groups keep Hydra's
answer, which says to add `-m`.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

# Hydra's sweep calls: one the grammar refuses has wrong arguments (interval(1e-2)), it is not free text.
_SWEEP_CALL = re.compile(r"^\s*(interval|choice|range|tag|glob|sort|shuffle)\s*\(")
_KEY = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.\-/@]*(?:@[\w.\-/]*)?$")  # a config key or group, as Hydra spells them


def quote_free_text(args: list[str], multirun: bool | None = None) -> list[str]:
    """`args` with every `key=value` whose value Hydra's grammar refuses rewritten as `key='value'`, and in a
    single run, every one it reads as a sweep over text (a comma in free text). `multirun` None: as `args` say."""
    if multirun is None:
        multirun = any(a in ("-m", "--multirun") or a.startswith("hydra.mode=") for a in args)
    parser = None
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or not _KEY.match(key) or _SWEEP_CALL.match(value):
            out.append(arg)
            continue
        parser = parser or _parser()
        parsed = _parses_to(parser, arg)
        if parsed is not _REFUSED and (multirun or not _text_with_commas(key, parsed)):
            out.append(arg)
            continue
        quoted = f"{key}={hydra_quote(value)}"
        out.append(quoted if _parses_to(parser, quoted) == value else arg)
    return out


def hydra_quote(value: str) -> str:
    """`value` in Hydra's single-quoted form: a quote inside is written \\', and so is any run of backslashes
    that ends the value or precedes a quote doubled (elsewhere a backslash stands for itself)."""
    body = re.sub(r"(\\+)(?='|$)", r"\1\1", value)
    return "'" + body.replace("'", "\\'") + "'"


def quoting_hint(override: str) -> str:
    """How to type `override` so that Hydra takes its value as text, for the error that remains."""
    key, eq, value = override.partition("=")
    if not eq:
        return "write it as key=value"
    if _SWEEP_CALL.match(value):
        return "write interval(low, high), tag(log, interval(low, high)), choice(a, b, ...) or range(start, stop, step)"
    if not _KEY.match(key):
        return f"{key!r} is not a config key: keys are ASCII names such as data.source (`--cfg job` lists them)"
    typed = f"{key}={hydra_quote(value)}"
    # The shell's double quotes keep Hydra's single ones as they are, but not a backslash, ", $, ` or !.
    shell = f'"{typed}"' if not any(c in typed for c in '\\"$`!') else shlex.quote(typed)
    return f"write it as key=value, with free text in Hydra's quotes inside the shell's: {shell}"


_REFUSED = object()


def _text_with_commas(key: str, parsed: Any) -> bool:
    """Whether Hydra read `key=a, b` as a plain comma sweep with some text in it, on a key that is not a group."""
    from hydra.core.override_parser.types import ChoiceSweep

    from nanogpt.cli.compose import GROUPS

    if not isinstance(parsed, ChoiceSweep) or not parsed.simple_form or "/" in key or key.lstrip("+~") in GROUPS:
        return False
    return any(isinstance(v, str) for v in parsed.list)


def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parses_to(parser: Any, override: str) -> Any:
    """The value Hydra reads from `override`, or _REFUSED."""
    from hydra.errors import HydraException

    try:
        return parser.parse_override(override).value()
    except HydraException:
        return _REFUSED
