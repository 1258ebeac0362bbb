"""docs/DEPLOYMENT.md names only flags that `sfu serve` has, and its sample commands
parse (its coturn configuration is run by tests/browser/test_reachability.py)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from signaling.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md"
NOT_OURS = {"--network"}  # docker run's


def _serve_flags() -> set[str]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in commands.choices["serve"]._actions for option in action.option_strings}


def test_every_flag_the_page_names_exists() -> None:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", DOC.read_text())) - NOT_OURS
    assert named and named <= _serve_flags(), sorted(named - _serve_flags())


def test_the_sample_serve_commands_parse() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    commands = []
    for block in blocks:
        text = re.sub(r"\$\([^)]*\)", "x", block.replace("\\\n", " "))
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if "serve" in words and ("sfu" in words or "sfu-image" in words):
                argv = words[words.index("serve") + 1:]
                commands.append([w for w in argv if w != "..."])
    assert len(commands) >= 4
    for argv in commands:
        build_parser().parse_args(["serve", *argv])  # exits (SystemExit) on an unknown flag
