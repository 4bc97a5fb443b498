"""The README says what the commands do: every flag default it states is the parser's, every import it shows runs,
and the top-level help speaks to a user."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from ettin_rerank.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = ("rerank", "serve", "batch", "train", "calibrate", "demo", "eval", "build-untrained")
STATED_DEFAULT = re.compile(r"`(--[a-z][a-z-]*)`(?:, default | \()`?([^`;)]+?)`?\s*(?=;|\)|,(?!\d)|$)",
                            re.MULTILINE)
"""How the README states a flag's default: "`--flag`, default X" or "`--flag` (X)"."""


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _paragraph(offset: int) -> str:
    """The paragraph or list item around ``offset`` (what a statement's command is named in)."""
    start = max(README.rfind("\n\n", 0, offset), README.rfind("\n- ", 0, offset))
    end = min(i for i in (README.find("\n\n", offset), README.find("\n- ", offset), len(README)) if i != -1)
    return README[start:end]


def _statements() -> list[tuple[str, str, str]]:
    """``(command, flag, stated value)`` for every default the README states."""
    parsers = _subparsers()
    found = []
    for match in STATED_DEFAULT.finditer(README):
        flag, value = match.group(1), match.group(2).strip()
        having = [name for name, parser in parsers.items() if flag in parser._option_string_actions]
        if len(having) > 1:
            around = _paragraph(match.start())
            having = [name for name in having if re.search(rf"(`|ettin-rerank |\*\*`){re.escape(name)}\b", around)]
        assert len(having) == 1, f"the README states a default for {flag} without naming one command ({having})"
        found.append((having[0], flag, value))
    return found


STATEMENTS = list(dict.fromkeys(_statements()))


def _number(text: str) -> float | None:
    match = re.fullmatch(r"([\d,.]+)\s*(MB|KB|GB|s|passes)?", text)
    if match is None:
        return None
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}.get(match.group(2) or "", 1)
    return float(match.group(1).replace(",", "")) * scale


def test_the_readme_states_defaults():
    assert len(STATEMENTS) >= 6
    assert ("eval", "--top-k", "100") in STATEMENTS and ("serve", "--max-documents", "1,000") in STATEMENTS


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [pytest.param(*s, id=f"{s[0]} {s[1]}") for s in STATEMENTS],
)
def test_every_flag_default_the_readme_states_is_the_parsers(command, flag, value):
    """A default the parser holds must equal the README's; one the parser leaves to the code (``None``) must be
    the one its ``--help`` states."""
    action = _subparsers()[command]._option_string_actions[flag]
    stated = _number(value)
    if action.default is None:
        help_text = " ".join((action.help or "").split())
        expected = [re.sub(r"[,\s]", "", n) for n in re.findall(r"[\d][\d,.]*", value)] or [value]
        said = re.sub(r"(?<=\d),(?=\d)", "", help_text)
        assert "default" in help_text and all(e in said for e in expected), (
            f"README: {command} {flag} defaults to {value!r}; --help says {help_text!r}")
    elif stated is not None and isinstance(action.default, (int, float)):
        assert action.default == stated, f"README: {command} {flag} = {value}; parser: {action.default}"
    else:
        assert str(action.default) == value, f"README: {command} {flag} = {value!r}; parser: {action.default!r}"


def test_every_import_the_readme_shows_runs_and_the_clients_table_gives_them():
    imports = sorted(set(re.findall(r"from ([\w.]+) import ([\w, ]+?)(?=[`\s#]|$)", README, re.MULTILINE)))
    assert ("haystack_integrations.components.rankers.huggingface_api", "HuggingFaceTEIRanker") in imports
    for module, names in imports:
        namespace: dict = {}
        exec(f"from {module} import {names}", namespace)
        assert all(name.strip() in namespace for name in names.split(","))


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "Rule:" not in text and "argparse" not in text and "Namespace" not in text
    assert "COMMAND --help" in text and all(command in text for command in COMMANDS)
