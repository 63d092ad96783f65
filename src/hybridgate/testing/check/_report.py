"""The outcome of a check run: per-test results, the load numbers, the exit code, and how to print them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Status = Literal["passed", "failed", "skipped"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
EXIT_CONFIG = 3


@dataclass
class TestResult:
    """One test's outcome. `unreachable` marks a skip caused by the target not answering (exit 2, never 1)."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    status: Status
    duration: float = 0.0
    error: str | None = None
    metrics: dict[str, Any] | None = None
    unreachable: bool = False

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "status": self.status, "duration": round(self.duration, 4)}
        if self.error is not None:
            d["error"] = self.error
        if self.metrics:
            d["metrics"] = self.metrics
        return d


@dataclass
class Report:
    target: str
    started_at: str
    tests: list[TestResult] = field(default_factory=list)
    duration_seconds: float = 0.0
    load_test: dict[str, float] | None = None
    # Why the target counted as unreachable, when it did.
    unreachable: str | None = None

    @property
    def exit_code(self) -> int:
        """2 when the target could not be reached (results are incomplete), else 1 on any failure, else 0."""
        if self.unreachable is not None:
            return EXIT_UNREACHABLE
        if any(t.status == "failed" for t in self.tests):
            return EXIT_FAILED
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        count = {s: sum(1 for t in self.tests if t.status == s) for s in ("passed", "failed", "skipped")}
        d: dict[str, Any] = {
            "summary": {
                "total": len(self.tests),
                **count,
                "duration_seconds": round(self.duration_seconds, 3),
            },
            "tests": [t.as_dict() for t in self.tests],
        }
        if self.load_test is not None:
            d["load_test"] = self.load_test
        d["target"] = self.target
        d["started_at"] = self.started_at
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2) + b"\n"


_STYLE = {"passed": "green", "failed": "bold red", "skipped": "yellow"}


def _detail(t: TestResult) -> str:
    if t.error:
        return t.error
    m = t.metrics or {}
    merged = {**m, **(m.get("behaviour") or {})}
    shown = {
        k: v
        for k, v in merged.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool) and k != "note"  # printed below
    }
    return ", ".join(f"{k}={v}" for k, v in list(shown.items())[:5])


def render_text(report: Report, console: Any = None) -> None:
    """A rich table of the tests, the load numbers when there are any, and a one-line verdict."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"hybridgate check: {report.target}", title_justify="left")
    table.add_column("test", overflow="fold")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("details", overflow="fold")
    for t in report.tests:
        status = "unreachable" if t.unreachable else t.status
        table.add_row(t.name, f"[{_STYLE[t.status]}]{status}[/]", f"{t.duration * 1000:.0f} ms", _detail(t))
    console.print(table)
    for t in report.tests:  # what a passing test still wants a reader to know (e.g. the model is a mock)
        note = (t.metrics or {}).get("note")
        if isinstance(note, str):
            console.print(f"[yellow]note[/] ({t.name}): {note}")
    if report.load_test is not None:
        lt = report.load_test
        console.print(
            f"load: {lt['requests_per_second']:.1f} req/s, p50 {lt['p50_latency_ms']:.0f} ms, "
            f"p95 {lt['p95_latency_ms']:.0f} ms, p99 {lt['p99_latency_ms']:.0f} ms, "
            f"error rate {lt['error_rate']:.2%}"
        )
    s = report.as_dict()["summary"]
    line = (
        f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped in {s['duration_seconds']:.1f}s"
    )
    if report.unreachable is not None:
        console.print(f"[bold red]target unreachable[/]: {report.unreachable} ({line})")
    elif s["failed"]:
        console.print(f"[bold red]FAILED[/]: {line}")
    else:
        console.print(f"[green]OK[/]: {line}")
