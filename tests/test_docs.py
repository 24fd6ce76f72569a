"""The docs cannot drift from the code: every command in a code block of README.md and docs/*.md that runs one of
our entry points (`python run.py ...`, also behind `torchrun` or `VAR=value` prefixes, with `-m` sweeps) resolves
its config. Each is composed in process with Hydra's compose API from conf/, as its entry point composes it (free
text quoted first, a sweep's first value of each swept key), and converted to its validated dataclass; nothing runs
and no saved config is read (`run=`/`resume=` name dirs that need not exist). Scripts (`python benchmarks/x.py`)
and modules (`python -m nanogpt.x`) the docs run must exist. One real `run.py --cfg job` checks that composing in
process gives what the entry point gives."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENTRY_POINTS = {"run.py", "prepare.py", "sample.py", "eval.py", "export.py", "chat.py", "serve.py"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # a fence's info string: ```bash, ```sh or plain ```
OPERATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"<(?!\|)[^<>\n]*?>")  # <run dir>, <date>; not <|endoftext|>
ENV_VAR = re.compile(r"^[A-Za-z_]\w*=")
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn"}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--info", "-i"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line, the test's id
    text: str  # the command as the docs show it (one segment of a && chain)
    program: str  # an entry point (run.py), a script (benchmarks/x.py) or a module (-m nanogpt.sweeps)
    args: tuple[str, ...]  # what follows the program


def _logical_lines(path: Path):
    """(line number, text) of each shell line in the file's code blocks, `\\`-continued lines joined."""
    block, start, pending = None, 0, ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            block = fence[3:].strip().lower() if block is None else None
            continue
        if block not in SHELL_BLOCKS:
            continue
        if not pending:
            start = n
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        yield start, pending
        pending = ""


def _segments(words: list[str]):
    """The simple commands of a chain such as `(a || b) && c`, a subshell's parentheses dropped."""
    segment: list[str] = []
    for word in [*words, ";"]:
        if word in OPERATORS:
            if segment:
                yield segment
            segment = []
            continue
        while word.startswith("(") and word.count("(") > word.count(")"):
            word = word[1:]
        while word.endswith(")") and word.count(")") > word.count("("):
            word = word[:-1]
        if word:
            segment.append(word)


def _program(words: list[str]) -> tuple[str, list[str]] | None:
    """The program a simple command runs, and its arguments; None when it is not python or torchrun."""
    while words and ENV_VAR.match(words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] in ("python", "python3"):
        if len(words) > 2 and words[1] == "-m":
            return f"-m {words[2]}", words[3:]
        if len(words) > 1 and words[1].endswith(".py"):
            return words[1], words[2:]
        return None
    if words[0] == "torchrun":
        for i, word in enumerate(words[1:], 1):
            if not word.startswith("-") and word.endswith(".py"):
                return word, words[i + 1 :]
    return None


def doc_commands(paths: list[Path]) -> list[Command]:
    out = []
    for path in paths:
        name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
        for n, line in _logical_lines(path):
            if not re.search(r"\b(python3?|torchrun)\b", line):
                continue
            # Placeholders (<run dir>) are words, not the shell's redirections.
            typed = PLACEHOLDER.sub(lambda m: "_" + re.sub(r"\W+", "_", m[0][1:-1]).strip("_") + "_", line)
            where = f"{name}:{n}"
            try:
                words = shlex.split(typed.lstrip("$ "), comments=True)
            except ValueError as e:  # unbalanced quotes: the command cannot be typed as shown
                out.append(Command(where, line.strip(), "run.py", (f"<{e}>",)))
                continue
            for segment in _segments(words):
                found = _program(segment)
                if found:
                    program, args = found
                    out.append(Command(where, shlex.join(segment), program, tuple(args)))
    return out


COMMANDS = doc_commands(DOCS)
ENTRY_COMMANDS = [c for c in COMMANDS if c.program in ENTRY_POINTS]
OTHER_COMMANDS = [c for c in COMMANDS if c.program not in ENTRY_POINTS]


def _hydra_args(cmd: Command) -> tuple[list[str], bool, str | None]:
    """The overrides of an entry point's command line, whether it is a multirun, and a --config-name."""
    overrides, multirun, config_name = [], False, None
    args = list(cmd.args)
    while args:
        arg = args.pop(0)
        if arg in FLAGS_WITH_VALUE:
            value = args.pop(0) if args else ""
            config_name = value if arg in ("--config-name", "-cn") else config_name
        elif arg in FLAGS:
            multirun = multirun or arg in ("-m", "--multirun")
        elif arg.startswith("-"):
            pytest.fail(f"{cmd.where}: `{cmd.text}` passes {arg}, which this test does not know: teach it")
        else:
            overrides.append(arg)
    return overrides, multirun, config_name


def _config_name(script: Path) -> str:
    """The config an entry point composes: its @hydra.main's config_name."""
    m = re.search(r"config_name\s*=\s*[\"'](\w+)[\"']", script.read_text(encoding="utf-8"))
    assert m, f"{script.name} has no @hydra.main(config_name=...): teach this test how it composes"
    return m[1]


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """One job of a multirun: each swept key at its first value (`a=1,2`, `choice(..)`, `range(..)`), or at the
    lower end of an `interval(..)` (which has no values to list)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        value = o.value()
        first = str(value.start) if isinstance(value, IntervalSweep) else next(iter(o.sweep_string_iterator()))
        out.append(f"{o.get_key_element()}={first}")
    return out


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def compose_command(config_name: str, overrides: list[str], multirun: bool):
    """The job config an entry point would compose for these overrides (in a multirun: its first job, sweeps set
    in the config's hydra.sweeper.params included), without the `hydra` node."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from nanogpt.cli.compose import register_configs
    from nanogpt.cli.quoting import quote_free_text

    register_configs()
    overrides = quote_free_text(overrides, multirun)
    if multirun:
        overrides = _first_of_sweeps(overrides)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        params = (cfg.hydra.sweeper.get("params") or {}) if multirun else {}
        given = {_key(o) for o in overrides}
        swept = [f"{k}={v}" for k, v in params.items() if k not in given and not OmegaConf.is_config(v)]
        if swept:
            cfg = compose(config_name, overrides=_first_of_sweeps(swept) + overrides, return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_commands_are_read_as_the_shell_reads_them(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        '(python -c "import torch" 2>/dev/null || pip install torch) && pip install -e . && python prepare.py a=1\n'
        "OMP_NUM_THREADS=1 python run.py -m a=1,2   # a comment\n"
        "torchrun --standalone --nproc-per-node=8 run.py \\\n"
        '    b=2 c="x y"\n'
        'python sample.py run=<run dir> stop="<|endoftext|>" d=interval(1,2)\n'
        "```\n"
        "```python\n"
        "python run.py not=shell\n"
        "```\n"
        "```\n"
        "python -m nanogpt.sweeps multirun/<date>/<time>\n"
        "```\n",
        encoding="utf-8",
    )
    assert [(c.where, c.program, c.args) for c in doc_commands([doc])] == [
        ("doc.md:2", "prepare.py", ("a=1",)),
        ("doc.md:3", "run.py", ("-m", "a=1,2")),
        ("doc.md:4", "run.py", ("b=2", "c=x y")),
        ("doc.md:6", "sample.py", ("run=_run_dir_", "stop=<|endoftext|>", "d=interval(1,2)")),
        ("doc.md:12", "-m nanogpt.sweeps", ("multirun/_date_/_time_",)),
    ]


def test_the_docs_show_commands():
    """The parser finds the commands: README's command 1 runs prepare.py, run.py and sample.py."""
    readme = [c.program for c in ENTRY_COMMANDS if c.where.startswith("README.md:")]
    assert readme[:3] == ["prepare.py", "run.py", "sample.py"], readme
    assert len(ENTRY_COMMANDS) > 40, len(ENTRY_COMMANDS)


@pytest.mark.parametrize("cmd", ENTRY_COMMANDS, ids=[c.where for c in ENTRY_COMMANDS])
def test_doc_command_resolves_its_config(cmd: Command):
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from nanogpt.cli.compose import SCHEMAS, config_error_line, to_object
    from nanogpt.errors import UserError

    script = REPO / cmd.program
    assert script.is_file(), f"{cmd.where}: `{cmd.text}` runs {cmd.program}, which does not exist"
    overrides, multirun, config_name = _hydra_args(cmd)
    try:
        cfg = compose_command(config_name or _config_name(script), overrides, multirun)
        schema = OmegaConf.get_type(cfg)
        assert schema in SCHEMAS.values(), f"{cmd.where}: composed a {schema}, not one of our schemas"
        to_object(cfg, schema)  # typed and validated, as the entry point does before it runs
    except (HydraException, OmegaConfBaseException, UserError) as e:
        if isinstance(e, MissingConfigException) and (e.missing_cfg_file or "").endswith("sweeper/optuna"):
            pytest.skip(f"{cmd.where}: `{cmd.text}` needs the Optuna sweeper, which is not installed yet")
        pytest.fail(f"{cmd.where}: `{cmd.text}` does not resolve: {config_error_line(e)}", pytrace=False)


@pytest.mark.parametrize("cmd", OTHER_COMMANDS, ids=[c.where for c in OTHER_COMMANDS])
def test_doc_script_or_module_exists(cmd: Command):
    """`python benchmarks/x.py` names a file of the repo; `python -m nanogpt.x` a module of the package."""
    if cmd.program.startswith("-m "):
        module = cmd.program[3:]
        if module.split(".")[0] != "nanogpt":
            return  # pytest, pip: not ours
        assert importlib.util.find_spec(module), f"{cmd.where}: `{cmd.text}` runs {module}, which does not exist"
    else:
        assert (REPO / cmd.program).is_file(), f"{cmd.where}: `{cmd.text}` runs {cmd.program}, which does not exist"


REPO_PATH = re.compile(r"(?<![\w./~-])((?:nanogpt|benchmarks|tests|conf)/[\w/.-]*\w)")  # nanogpt/config.py, conf/data/


LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](docs/data.md), [text](#guides), [text](training.md#resume)


def _anchors(doc: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    headings = re.findall(r"^#+\s+(.*)$", doc.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _broken(doc: Path, line: str) -> list[str]:
    out = [m[1] for m in REPO_PATH.finditer(line) if not (REPO / m[1]).exists()]
    for target in LINK.findall(line):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path) if path else doc
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            out.append(target)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_files_the_docs_name_exist(doc: Path):
    """A module, script or config the docs name by its path (`nanogpt/eval/harness.py`), and every file and heading
    they link to, is still there."""
    missing = [
        f"{doc.relative_to(REPO)}:{n}: {target}"
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        for target in _broken(doc, line)
    ]
    assert not missing, "the docs name files or headings that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_headings_stand_apart(doc: Path):
    """A heading glued to the paragraph above it reads as part of that paragraph in an editor."""
    lines, block, glued = doc.read_text(encoding="utf-8").splitlines(), False, []
    for n, line in enumerate(lines, 1):
        block = block != line.strip().startswith("```")
        if not block and line.startswith("#") and n > 1 and lines[n - 2].strip():
            glued.append(f"{doc.relative_to(REPO)}:{n}: {line}")
    assert not glued, "headings with no blank line above them:\n" + "\n".join(glued)


def test_composing_in_process_is_what_the_entry_point_composes():
    from omegaconf import OmegaConf

    args = ["experiment=shakespeare_char_cpu", "optim.lr=3e-3"]
    shown = subprocess.run(
        [sys.executable, "run.py", *args, "--cfg", "job"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    ours = OmegaConf.to_container(compose_command("train", args, multirun=False), resolve=False)
    assert OmegaConf.to_container(OmegaConf.create(shown.stdout), resolve=False) == ours
