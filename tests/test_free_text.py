"""Free text on the command line of every entry point: values Hydra's grammar refuses (any non-ASCII character,
quotes, `<|`, `#`, ...) are quoted for it before it reads sys.argv; valid overrides are left exactly as typed.
(run.py, sample.py and export.py take Chinese names, paths, prompts and stop strings in tests/test_bpe.py.)"""

from __future__ import annotations

import json
import random
import shlex

import pytest

from tests.helpers import one_line_error, run_entry


def test_refused_values_are_quoted_and_valid_overrides_untouched():
    from nanogpt.cli.quoting import quote_free_text

    typed = {
        "start=床前明月光": "start='床前明月光'",
        "start=Héllo": "start='Héllo'",
        "stop=<|endoftext|>": "stop='<|endoftext|>'",
        "data.source=/data/文本.txt": "data.source='/data/文本.txt'",
        "+extra.key=日本": "+extra.key='日本'",
        "start=it's": "start='it\\'s'",
        "start=a=b#c": "start='a=b#c'",
        "out=C:\\模型\\": "out='C:\\模型\\\\'",
    }
    untouched = [
        "optim.lr=1e-3,3e-3",
        "model.n_layer=range(2,6,2)",
        "x=${oc.env:HOME}",
        "l=[1,2]",
        "start=ROMEO:",
        "hydra/launcher=slurm",
        "-m",
        "--cfg",
        "job",
        "start=",
        "日本=1",
        "start=\"'quoted'\"",
    ]
    assert quote_free_text([*typed, *untouched]) == [*typed.values(), *untouched]


def test_quoted_form_reads_back_exactly():
    """Hydra's parser reads every quoted value back as the text itself: quotes, backslashes before quotes and at
    the end, commas, spaces and any script."""
    from nanogpt.cli.quoting import _parser, _parses_to, hydra_quote

    parser = _parser()
    rng = random.Random(0)
    alphabet = ["\\", "'", '"', " ", ",", "=", "#", "(", "]", "a", "é", "床", "😀", "\t", ":"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert _parses_to(parser, f"start={hydra_quote(text)}") == text, text


def test_scripts_on_the_command_line(tmp_path):
    """prepare.py reads a source and writes a data set whose names are Chinese, typed unquoted; an override that
    stays wrong (a key that is not ASCII) is one line saying what keys are."""
    source = tmp_path / "数据" / "文本.txt"
    source.parent.mkdir()
    source.write_text("床前明月光，疑是地上霜。\n" * 50, encoding="utf-8")
    run_entry(
        "prepare.py",
        "data=text",
        "data.name=诗集",
        "data.tokenizer=char",
        f"data.source={source}",
        f"paths.data_dir={tmp_path / '数据'}",
        cwd=tmp_path,
    )
    meta = json.loads((tmp_path / "数据" / "诗集" / "meta.json").read_text())
    assert meta["source"] == str(source) and meta["vocab_size"] == len(set("床前明月光，疑是地上霜。\n"))

    proc = run_entry("prepare.py", "日本=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: cannot parse the override '日本=1' (LexerNoViableAltException: 日本=1): '日本' is not a config key: "
        "keys are ASCII names such as data.source (`--cfg job` lists them)"
    )


@pytest.mark.parametrize("value", ["a{b", "it's \\", "床 'x'", 'say "$HOME"!'])
def test_remaining_error_says_how_to_quote(value):
    """Where Hydra still refuses an override, the line shows it typed so that the shell and Hydra read it back."""
    from nanogpt.cli.quoting import _parser, _parses_to, quoting_hint

    hint = quoting_hint(f"start={value}")
    (typed,) = shlex.split(hint.rsplit(": ", 1)[1])  # as a POSIX shell reads it
    assert _parses_to(_parser(), typed) == value


def test_text_with_a_comma_in_a_single_run(tmp_path):
    """`start="Hello, world"` is text in a single run (Hydra alone calls it an ambiguous sweep); in a multirun a
    comma is still a sweep, and numbers keep Hydra's answer, which says to add -m."""
    from nanogpt.cli.quoting import quote_free_text

    out = run_entry("sample.py", "run=anything", "start=Hello, world", "stop=a,b", "--cfg", "job", cwd=tmp_path).stdout
    assert "start: Hello, world" in out and "stop: a,b" in out, out
    assert quote_free_text(["-m", "name=a,b"]) == ["-m", "name=a,b"]
    assert quote_free_text(["name=a,b"], multirun=True) == ["name=a,b"]
    assert quote_free_text(["optim.lr=1e-3,3e-3", "model=tiny,baby"]) == ["optim.lr=1e-3,3e-3", "model=tiny,baby"]
    proc = run_entry("run.py", "optim.lr=1e-3,3e-3", "--cfg", "job", cwd=tmp_path, check=False)
    one_line_error(proc, "optim.lr=1e-3,3e-3", "add -m")
