"""The code blocks of README.md and docs/*.md run as written, and their commands parse.

**Python blocks.** Every fenced block labelled ``python`` (or ``py``) is saved as a file in an
empty temporary folder and run as ``python snippet.py`` would run it, in a process of its own,
with ``OMP_NUM_THREADS=1`` (as the test suite runs). That is what a reader does who copies one
block: a block cannot lean on names defined by another block or by the test process (imports,
seeds, threads), and ``if __name__ == "__main__":`` guards behave as in a user's file. The
process is forked from a server that has only imported torch and bayesagg (``multiprocessing``'s
forkserver, started once for this module): each block still starts from a clean interpreter
state, without paying torch's import again (two to five seconds a block). A block that starts
processes of its own (``torch.multiprocessing.spawn``, ``multiprocessing``) runs as a fresh
``python snippet.py``, as before, since those re-import the file in new interpreters. A block
passes when it exits with 0 and writes no warning to stderr (the library warns once when a hook
is forgotten, e.g. FAMO without ``after_step``, so a snippet that silently degrades fails here).
No block can be exempted: a block that is not a complete program must not be labelled
``python``; make it complete instead.

**Commands.** Fenced blocks labelled ``bash``, ``sh``, ``shell``, ``console`` or unlabelled, and
indented code blocks, are split into commands (continuation lines joined, comments dropped,
split at ``&&``, ``||``, ``;`` and ``|``). Running them would train models for minutes to days,
so they are checked without running:

- every command of the ``bayesagg`` command line (``bayesagg ...``, ``python3 -m bayesagg
  ...``, ``torchrun ... -m bayesagg ...``, after environment assignments, ``time`` and
  ``nice``) is parsed by the command line's own argparse parser: an unknown subcommand or flag,
  a missing required option or a value of the wrong type fails, and the benchmark and method
  names it gives must be in the registries;
- every command that runs a script of this repository (``python scripts/timing/x.py``, ``python
  examples/x.py``, ``python -m bayesagg.examples.x``) must name a script that exists, and every
  ``--flag`` it uses must appear in the script's ``--help`` (all scripts' help is read in one
  child process, so that their imports do not touch this one).

Other commands (pip, pytest, ruff, du, ...) are not this project's and are left alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py"}
SHELL = {"", "bash", "sh", "shell", "console"}
WRAPPERS = {"time", "nice", "env", "exec"}


@dataclass(frozen=True)
class Block:
    """One code block: its document, first line (1-based), language and text."""

    path: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced (``` or ~~~) and indented code blocks of one markdown file, in order.

    An indented block is a run of lines indented by 4 spaces or more after a blank line,
    outside fences; it has the language "" (only its commands are checked).
    """
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    previous_blank = True
    while i < len(lines):
        opener = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if opener:
            indent, fence, language = opener.groups()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not re.match(
                rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]
            ):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
                j += 1
            blocks.append(Block(path, i + 1, language.lower(), "\n".join(body) + "\n"))
            i, previous_blank = j + 1, False
            continue
        if previous_blank and re.match(r"^( {4}|\t)\S", lines[i]):
            j = i
            while j < len(lines) and (re.match(r"^( {4}|\t)", lines[j]) or not lines[j].strip()):
                j += 1
            body = [
                line[4:] if line.startswith("    ") else line.lstrip("\t") for line in lines[i:j]
            ]
            blocks.append(Block(path, i + 1, "", "\n".join(body) + "\n"))
            i, previous_blank = j, True
            continue
        previous_blank = not lines[i].strip()
        i += 1
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS for block in code_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language in PYTHON]
SHELL_BLOCKS = [block for block in ALL_BLOCKS if block.language in SHELL]


# --------------------------------------------------------------------------- python blocks
def test_the_blocks_are_found():
    """The extraction sees the README's two snippets and the docs' own (a guard on the parser)."""
    readme = [b for b in PYTHON_BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 2  # the own loop and the baselines
    assert {b.path.name for b in PYTHON_BLOCKS} >= {"bayesagg.md", "distributed.md", "methods.md"}
    assert any("python3 -m bayesagg demo" in b.text for b in SHELL_BLOCKS)


def _run_block(script: str, output: str) -> None:
    """Run ``script`` as ``python script`` would, stdout and stderr to ``output`` (a child)."""
    import runpy

    import torch

    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    folder = os.path.dirname(script)
    os.chdir(folder)
    sys.path[0:0] = [folder]  # as for ``python script``: its folder first on the path
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")
    sys.stdout.flush()
    sys.stderr.flush()


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    """A multiprocessing context whose processes fork from a server that imported torch only."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "bayesagg"])
    return context


def _starts_processes(text: str) -> bool:
    return bool(re.search(r"\b(spawn|multiprocessing|subprocess)\b", text))


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block_runs_as_written(
    block: Block, tmp_path: Path, forkserver: multiprocessing.context.BaseContext
):
    script = tmp_path / "snippet.py"
    script.write_text(block.text)
    if _starts_processes(block.text):
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        returncode, stderr = done.returncode, done.stderr
    else:
        output = tmp_path / "output.txt"
        child = forkserver.Process(target=_run_block, args=(str(script), str(output)))
        child.start()
        child.join(timeout=600)
        if child.is_alive():
            child.kill()
            pytest.fail(f"{block.where} did not finish in 600 s")
        returncode, stderr = child.exitcode, output.read_text() if output.exists() else ""
    assert returncode == 0, f"{block.where} failed:\n{stderr[-4000:]}"
    warnings = [line for line in stderr.splitlines() if re.search(r"\w*Warning\b", line)]
    assert not warnings, f"{block.where} warns:\n{stderr[-4000:]}"


# --------------------------------------------------------------------------- commands
def commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block, as token lists (see the module docstring)."""
    text = re.sub(r"\\\n", " ", block.text)
    found: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (a formula in an indented block)
            continue
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in {"&&", "||", ";", "|", "&"}:
                if current:
                    found.append(current)
                current = []
            else:
                current.append(token)
    return found


def _strip_prefixes(tokens: list[str]) -> list[str]:
    """Drop environment assignments and wrappers (``time``, ``nice -n 10``, ``env``)."""
    tokens = list(tokens)
    while tokens:
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            tokens.pop(0)
        elif tokens[0] in WRAPPERS:
            tokens.pop(0)
            while tokens and tokens[0].startswith("-"):
                option = tokens.pop(0)
                if option in {"-n", "--adjustment"} and tokens:
                    tokens.pop(0)
        else:
            break
    return tokens


def classify(tokens: list[str]) -> tuple[str, str, list[str]] | None:
    """``("cli", "", args)``, ``("module", name, args)``, ``("script", path, args)`` or None."""
    tokens = _strip_prefixes(tokens)
    if not tokens:
        return None
    program = Path(tokens[0]).name
    if program == "bayesagg":
        return ("cli", "", tokens[1:])
    if program == "torchrun":
        rest = tokens[1:]
        if "-m" in rest:
            module_at = rest.index("-m") + 1
            return _module(rest[module_at], rest[module_at + 1 :])
        scripts = [t for t in rest if t.endswith(".py")]
        if scripts:
            at = rest.index(scripts[0])
            return ("script", scripts[0], rest[at + 1 :])
        return None
    if re.match(r"^python(3(\.\d+)?)?$", program):
        rest = tokens[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[1:]  # interpreter options (-u, -X ...)
        if len(rest) >= 2 and rest[0] == "-m":
            return _module(rest[1], rest[2:])
        if rest and rest[0].endswith(".py"):
            return ("script", rest[0], rest[1:])
    return None


def _module(name: str, args: list[str]) -> tuple[str, str, list[str]] | None:
    if name == "bayesagg":
        return ("cli", "", args)
    if name.startswith("bayesagg."):
        return ("module", name, args)
    return None  # pip, pytest, ruff, venv, ...


CLASSIFIED = [
    (block, kind, target, args)
    for block in SHELL_BLOCKS
    for tokens in commands(block)
    if (found := classify(tokens)) is not None
    for kind, target, args in [found]
]
CLI_COMMANDS = [(b, args) for b, kind, _, args in CLASSIFIED if kind == "cli"]
SCRIPT_COMMANDS = [(b, kind, target, args) for b, kind, target, args in CLASSIFIED if kind != "cli"]


def test_the_commands_are_found():
    """A guard on the splitting: the README's and the docs' commands are all seen."""
    assert len(CLI_COMMANDS) >= 15
    assert {args[0] for _, args in CLI_COMMANDS} >= {
        "demo",
        "list",
        "run",
        "compare",
        "report",
        "summary",
        "sweep",
    }
    assert any(target == "bayesagg.examples.ddp" for _, _, target, _ in SCRIPT_COMMANDS)


@pytest.mark.parametrize(
    ("block", "args"),
    CLI_COMMANDS,
    ids=[f"{b.where} {' '.join(args[:1])}" for b, args in CLI_COMMANDS],
)
def test_bayesagg_command_parses(block: Block, args: list[str], capsys):
    from bayesagg import methods
    from bayesagg.app.cli import _build_parser
    from bayesagg.benchmarks import registry

    command = "bayesagg " + shlex.join(args)
    try:
        parsed = _build_parser().parse_args(args)
    except SystemExit as stop:
        pytest.fail(f"{block.where}: `{command}` does not parse: {capsys.readouterr().err}")
        raise AssertionError from stop  # unreachable; pytest.fail raises
    benchmark = getattr(parsed, "benchmark", None)
    if benchmark is not None:
        assert benchmark in registry.names(), f"{block.where}: unknown benchmark in `{command}`"
    names = [getattr(parsed, "method", None), *(getattr(parsed, "methods", None) or "").split(",")]
    for name in filter(None, names):
        assert name in methods.names(), f"{block.where}: unknown method {name!r} in `{command}`"


_HELP_READER = """
import contextlib, io, json, runpy, sys
out = {}
for kind, target in json.loads(sys.argv[1]):
    sys.argv = [target, "--help"]
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    except SystemExit:
        pass
    out[target] = buffer.getvalue()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def script_help() -> dict[str, str]:
    """Every documented script's ``--help`` text, read in one child process."""
    targets = sorted({(kind, target) for _, kind, target, _ in SCRIPT_COMMANDS})
    existing = [(k, t) for k, t in targets if k == "module" or (ROOT / t).is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _HELP_READER, json.dumps(existing)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("block", "kind", "target", "args"),
    SCRIPT_COMMANDS,
    ids=[f"{b.where} {target}" for b, _, target, _ in SCRIPT_COMMANDS],
)
def test_script_command_flags_exist(
    block: Block, kind: str, target: str, args: list[str], script_help: dict[str, str]
):
    if kind == "script":
        assert (ROOT / target).is_file(), f"{block.where}: no script {target} in the repository"
    text = script_help.get(target, "")
    assert "usage:" in text, f"{block.where}: `{target} --help` printed no usage"
    for token in args:
        flag = token.split("=", 1)[0]
        if re.match(r"^--[\w-]+$", flag):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{block.where}: {target} has no option {flag}"
            )


def test_every_linked_example_exists():
    """Paths to examples/ and scripts/ files named anywhere in the docs exist."""
    for path in DOCUMENTS:
        for name in re.findall(r"\b((?:examples|scripts)/[\w/]+\.py)\b", path.read_text()):
            if (ROOT / name).is_file() or (ROOT / "src" / "bayesagg" / name).is_file():
                continue
            pytest.fail(f"{path.relative_to(ROOT)} names {name}, which does not exist")
