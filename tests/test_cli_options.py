"""Every numeric option of every subcommand is checked before any work, with its range named."""

from __future__ import annotations

import argparse

import pytest

from pyro_vae.cli import build_parser, main
from pyro_vae.cli.options import Bounded


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {inner}".strip(), p) for inner, p in _subparsers(sub))
                yield name, sub


def _numeric_options() -> list[tuple[str, str, Bounded]]:
    found = []
    for command, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.type in (int, float):
                pytest.fail(f"{command} {action.option_strings[0]} is a bare {action.type.__name__}: give it a range")
            if isinstance(action.type, Bounded):
                found.append((command, action.option_strings[0], action.type))
    return found


OPTIONS = _numeric_options()


def _outside(bounded: Bounded) -> list[str]:
    """Values just outside the range, and values that are no number of the kind at all."""
    values = ["nan", "inf", "twelve"] + (["1.5"] if bounded.integer else [])
    step = 1 if bounded.integer else 1e-9
    if bounded.low is not None:
        values.append(str(bounded.low if bounded.open_low else bounded.low - step))
    if bounded.high is not None:
        values.append(str(bounded.high if bounded.open_high else bounded.high + step))
    return values


def test_the_options_were_found():
    names = {(command, flag) for command, flag, _ in OPTIONS}
    assert {("train", "--clip-norm"), ("score", "--contamination"), ("latent traverse", "--index")} <= names
    assert len(OPTIONS) >= 35


@pytest.mark.parametrize(("command", "flag", "bounded"), OPTIONS, ids=[f"{c}:{f}" for c, f, _ in OPTIONS])
def test_a_value_outside_the_range_is_refused_in_two_lines(command, flag, bounded, capsys):
    positional = [] if command in ("train", "fit-detector") else ["RUN"]
    if command == "fit-detector":
        positional = ["table.csv", "--out", "OUT"]
    for value in _outside(bounded):
        with pytest.raises(SystemExit) as stopped:
            main([*command.split(), *positional, f"{flag}={value}"])
        assert stopped.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 2 and "Traceback" not in lines[0], lines
        assert flag in lines[0] and bounded.text in lines[0], lines


def test_ranges_read_as_words():
    assert Bounded(1, integer=True).text == "an integer ≥ 1"
    assert Bounded(0, open_low=True).text == "a number > 0"
    assert Bounded(0, 0.5, open_low=True).text == "a number in (0, 0.5]"
    assert Bounded(0, 2**32 - 1, integer=True)("4294967295") == 2**32 - 1
    assert Bounded(0, 1, open_high=True)("0") == 0.0
