"""Numbers that are not numbers: NaN and infinities in every float option of every command
and in every float setting. ``click.FloatRange`` lets NaN through (each comparison with it is
false), and ``curate --near-duplicate nan`` once turned its filter off without a word.

The options are found by walking the real command group, so a float option added later
without the finite type fails here."""

from __future__ import annotations

import click
import pytest
from pydantic import ValidationError

from dinoseek.settings import Settings
from dinoseek_cli.main import main
from tests.cli_runner import invoke

NOT_NUMBERS = ("nan", "NaN", "inf", "-inf")


def float_parameters(command: click.Command, path: tuple[str, ...] = ()) -> list[str]:
    """``"curate --near-duplicate"`` for each float option (or argument) under ``command``."""
    if isinstance(command, click.Group):
        return [
            found
            for name, sub in sorted(command.commands.items())
            for found in float_parameters(sub, (*path, name))
        ]
    return [
        " ".join((*path, param.opts[0]))
        for param in command.params
        if isinstance(param.type, click.types.FloatParamType)
    ]


FLOAT_OPTIONS = float_parameters(main)


def test_the_walk_finds_the_float_options() -> None:
    assert {"curate --near-duplicate", "dedup --threshold", "search --threshold"} <= set(
        FLOAT_OPTIONS
    )
    assert len(FLOAT_OPTIONS) >= 15


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("option", FLOAT_OPTIONS)
def test_every_float_option_refuses_what_is_not_a_finite_number(option: str, value: str) -> None:
    *command, flag = option.split()
    result = invoke(*command, flag, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output


FLOAT_SETTINGS = sorted(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is float or field.annotation == float | None
)


def test_the_float_settings_are_found() -> None:
    assert {"decode_timeout_s", "header_timeout_s", "request_timeout_s"} <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_every_float_setting_refuses_what_is_not_a_finite_number(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"DINOSEEK_{name.upper()}", value)
    with pytest.raises(ValidationError, match="finite number"):
        Settings()
    monkeypatch.delenv(f"DINOSEEK_{name.upper()}")
    with pytest.raises(ValidationError, match="finite number"):
        Settings(**{name: float(value)})  # as a flag passes it
