"""What `hybridgate check` prints: a table on stdout, or exactly the JSON report; progress on stderr only."""

from __future__ import annotations

import sys
from pathlib import Path

from hybridgate.testing.check._options import CheckOptions
from hybridgate.testing.check._report import Report, TestResult, render_text


def run_for_cli(opts: CheckOptions, output: str) -> Report:
    from rich.console import Console

    from hybridgate.testing.check._runner import run_check

    err = Console(stderr=True)
    quiet = output == "json" or not sys.stderr.isatty()
    if "load" in opts.suites and not quiet:
        err.print(f"[dim]load suite: {opts.users} users for {opts.duration_s:g}s against {opts.target}[/]")

    def progress(r: TestResult) -> None:
        if not quiet:
            err.print(f"[dim]{r.name}: {'unreachable' if r.unreachable else r.status}[/]")

    return run_check(opts, progress)


def emit(report: Report, output: str, json_file: Path | None) -> None:
    """Print the report (JSON on stdout and nothing else, for machines) and write --json-file."""
    data = report.to_json()
    if json_file is not None:
        json_file.write_bytes(data)
    if output == "json":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        render_text(report)
