"""README examples are copy-pastable: shell lines that run as written, options that exist, Python that
compiles and imports what it names."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from critstep.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(*languages: str) -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in languages]


def shell_commands(block: str) -> list[str]:
    """The block's command lines, continuations joined, prompts and comments dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        line = line.removeprefix("$ ") if line.startswith("$ ") else line
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            commands.append(current)
        current = ""
    return commands


def test_no_text_follows_a_line_continuation() -> None:
    # `cmd \    # comment` escapes the space, not the newline: the next line then runs on its own.
    bad = [
        f"README.md:{start + i}: {line.strip()}"
        for start, block in blocks("bash", "sh", "console", "")
        for i, line in enumerate(block.splitlines(), start=1)
        if re.search(r"\\\s+\S", line) and not line.lstrip().startswith(("#", "|"))
    ]
    assert not bad, "\n".join(bad)


def _critstep_invocations() -> list[tuple[int, list[str]]]:
    out = []
    for start, block in blocks("bash", "sh", "console"):
        for command in shell_commands(block):
            words = shlex.split(command, comments=True)
            for k, word in enumerate(words):
                if word == "critstep" or word.endswith("$(which critstep)") or word == "$(which":
                    args = words[k + 1 :]
                    if word == "$(which":
                        args = args[1:]
                    out.append((start, args))
                    break
    return out


def test_every_critstep_command_in_the_readme_names_real_options() -> None:
    invocations = _critstep_invocations()
    assert len(invocations) > 20
    problems = []
    for line, args in invocations:
        command: click.Command = cli
        path = ["critstep"]
        while isinstance(command, click.Group) and args and not args[0].startswith("-"):
            name, args = args[0], args[1:]
            sub = command.get_command(click.Context(command), name)
            if sub is None:
                problems.append(f"README.md:{line}: {' '.join(path)} has no subcommand {name!r}")
                break
            command, path = sub, [*path, name]
        else:
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
            for word in args:
                option = word.split("=", 1)[0]
                if option.startswith("--") and option not in known:
                    problems.append(f"README.md:{line}: {' '.join(path)} has no option {option}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("line", "source"), blocks("python"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_python_examples_compile_and_import_what_they_name(line: int, source: str) -> None:
    tree = ast.parse(source, filename=f"README.md:{line}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("critstep"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"README.md:{line}: {node.module} has no {', '.join(missing)}"
