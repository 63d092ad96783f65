"""`hybridgate drift`: compare a mock's contract report with a real backend's (logic: hybridgate.testing.drift)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from hybridgate.cli._common import TextOrJson, fail, text_or_json


def drift(
    mock_report: Annotated[Path, typer.Argument(help="Contract report (JSON) of the mock.")],
    real_report: Annotated[Path, typer.Argument(help="Contract report (JSON) of the real backend.")],
    output: TextOrJson = "text",
) -> None:
    """Where a mock's contract report differs from a real backend's. Exit 0 none, 1 drift, 3 bad input."""
    from hybridgate.testing.drift import DriftInputError, compare_files, render_text

    text_or_json(output)
    try:
        found = compare_files(mock_report, real_report)
    except DriftInputError as e:
        raise fail(str(e)) from None
    if output == "json":
        typer.echo(orjson.dumps(found.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render_text(found)
    raise typer.Exit(1 if found.items else 0)
