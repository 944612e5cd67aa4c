"""Output helpers: Rich tables for people, ``--output json`` for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = typer.Option(Output.TABLE, "--output", "-o", help="table or json")


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def listing(
    output: Output,
    items: Any,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """A listing command's answer: ``items`` as JSON, or ``rows`` as a table."""
    if output is Output.JSON:
        emit_json(items)
    else:
        table(title, columns, rows)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for index, column in enumerate(columns):
        if column == "id":  # ids are copied into the next command: never fold them
            width = max((len(str(row[index])) for row in rows), default=2)
            t.add_column(column, no_wrap=True, min_width=width)
        else:
            t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    console.print(t)
