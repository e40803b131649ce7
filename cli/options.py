"""Command-line options declared once: one table row per option, defaults read from the configs.

A command written as ``def command(**given)`` and decorated with :func:`with_options` gets one
typer option per row of its table, in the table's order. Each row gives the option's type, its
help panel and its help; the default ``--help`` shows is read from the config dataclass that
holds the field, so it is never stale, and an option left out arrives as None (so ``--resume``
can tell "not given" from a default). ``tests/test_messages.py`` checks that every config field
has an option and every option a field.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


class Flag:
    """A switch that is off unless given (``--strict``)."""


class Toggle:
    """A switch with an explicit off (``--augment/--no-augment``); None when not given."""


class Row(NamedTuple):
    """One option: its type (int, float, str, Path, Flag or Toggle), panel and help.

    ``flag`` names the option on the command line when it differs from ``--field-name``;
    ``hidden`` leaves an old name out of ``--help``; ``argument`` makes it positional;
    ``required`` has typer refuse a command line without it.
    """

    kind: type
    panel: str
    help: str
    flag: str | None = None
    hidden: bool = False
    argument: bool = False
    required: bool = False


def with_options(table: dict[str, Row], *configs: type) -> Callable[[F], F]:
    """Give ``def command(**given)`` one typer option per row of ``table``.

    Parameters
    ----------
    table : dict of str to Row
        Option name (a config field's name) -> its row.
    *configs : type
        The dataclasses whose defaults ``--help`` shows, first match wins.
    """

    def decorate(command: F) -> F:
        parameters = [_parameter(name, row, configs) for name, row in table.items()]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return command

    return decorate


def _parameter(name: str, row: Row, configs: tuple[type, ...]) -> inspect.Parameter:
    flag = row.flag or "--" + name.replace("_", "-")
    common: dict[str, Any] = {"help": row.help, "rich_help_panel": row.panel}
    if row.argument:
        argument = typer.Argument(show_default=False, **common)
        annotation = Annotated[row.kind | None, argument]  # type: ignore[name-defined]
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return inspect.Parameter(name, kind, default=None, annotation=annotation)
    common["hidden"] = row.hidden
    if row.kind is Flag:
        annotation = Annotated[bool, typer.Option(flag, metavar="", **common)]
        default: Any = False
    elif row.kind is Toggle:
        annotation = Annotated[bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", **common)]
        default = None
    else:
        shown = _shown(name, configs)
        option = typer.Option(flag, show_default=shown, **common)
        annotation = Annotated[row.kind | None, option]  # type: ignore[name-defined]
        default = ... if row.required else None
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _shown(name: str, configs: tuple[type, ...]) -> str | bool:
    """Return the default ``--help`` shows: the config field's, or nothing for None."""
    for config in configs:
        fields = {f.name: f for f in dataclasses.fields(config)}
        if name in fields:
            value = fields[name].default
            if value is dataclasses.MISSING or value is None:
                return False
            return str(value)
    return False
