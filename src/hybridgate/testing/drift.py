"""`hybridgate drift`: where a mock's contract report differs from a real backend's, so the mock can follow.

Both inputs are `hybridgate check --suite contract --output json` reports. The contract suite records, per
test, the fields it saw (`metrics.fields`: path -> JSON type) and the behaviour (`metrics.behaviour`: status
codes, error params, stream event order); this compares exactly those, never timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

ABSENT = "<absent>"
Kind = Literal["test", "status", "field", "behaviour"]


class DriftInputError(Exception):
    """An input is not a contract report; the message says how to make one (exit code 3)."""


@dataclass(frozen=True)
class DriftItem:
    test: str
    kind: Kind
    key: str
    mock: Any
    real: Any

    def as_dict(self) -> dict[str, Any]:
        return {"test": self.test, "kind": self.kind, "key": self.key, "mock": self.mock, "real": self.real}


@dataclass
class Drift:
    mock: str
    real: str
    compared: int = 0
    items: list[DriftItem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mock": self.mock,
            "real": self.real,
            "compared_tests": self.compared,
            "drift": [i.as_dict() for i in self.items],
        }


def load_report(path: str | Path) -> dict[str, dict[str, Any]]:
    """The contract tests of a check report, by name."""
    p = Path(path)
    hint = f"make one with: hybridgate check --target URL --suite contract --output json --json-file {p}"
    try:
        data = orjson.loads(p.read_bytes())
    except FileNotFoundError:
        raise DriftInputError(f"{p}: no such file; {hint}") from None
    except OSError as e:
        raise DriftInputError(f"{p}: cannot read it: {e}") from None
    except orjson.JSONDecodeError as e:
        raise DriftInputError(f"{p}: not JSON ({e}); {hint}") from None
    tests = data.get("tests") if isinstance(data, dict) else None
    if not isinstance(tests, list) or not all(
        isinstance(t, dict) and "name" in t and "status" in t for t in tests
    ):
        raise DriftInputError(f"{p}: not a hybridgate check report (no 'tests' list); {hint}")
    contract = {str(t["name"]): t for t in tests if str(t["name"]).startswith("contract.")}
    if not contract:
        raise DriftInputError(f"{p}: the report has no contract tests; {hint}")
    return contract


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def _diff(test: str, kind: Kind, a: dict[str, Any], b: dict[str, Any]) -> list[DriftItem]:
    return [
        DriftItem(test, kind, k, a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    ]


def compare(
    mock: dict[str, dict[str, Any]],
    real: dict[str, dict[str, Any]],
    mock_name: str = "mock",
    real_name: str = "real",
) -> Drift:
    """Every difference, test by test: presence, outcome, observed fields, behaviour."""
    out = Drift(mock_name, real_name)
    for name in [*mock, *(n for n in real if n not in mock)]:
        a, b = mock.get(name), real.get(name)
        if a is None or b is None:
            out.items.append(DriftItem(name, "test", "present", a is not None, b is not None))
            continue
        out.compared += 1
        if a["status"] != b["status"]:
            out.items.append(DriftItem(name, "status", "status", _outcome(a), _outcome(b)))
        ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
        # A test that stopped early saw fewer fields; comparing them would bury the real difference.
        if ma.get("fields") and mb.get("fields"):
            out.items += _diff(name, "field", ma["fields"], mb["fields"])
        if ma.get("behaviour") is not None and mb.get("behaviour") is not None:
            out.items += _diff(name, "behaviour", _flat(ma["behaviour"]), _flat(mb["behaviour"]))
    return out


def _outcome(t: dict[str, Any]) -> str:
    return t["status"] + (f": {t['error']}" if t.get("error") else "")


def compare_files(mock_path: str | Path, real_path: str | Path) -> Drift:
    return compare(load_report(mock_path), load_report(real_path), str(mock_path), str(real_path))


def render_text(d: Drift, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not d.items:
        console.print(f"[green]no drift[/] across {d.compared} contract tests ({d.mock} vs {d.real})")
        return
    table = Table(title=f"contract drift: {d.mock} (mock) vs {d.real} (real)", title_justify="left")
    for col in ("test", "kind", "field or behaviour", "mock", "real"):
        table.add_column(col, overflow="fold")
    for i in d.items:
        table.add_row(i.test, i.kind, i.key, str(i.mock), str(i.real))
    console.print(table)
    tests = len({i.test for i in d.items})
    console.print(
        f"[bold red]{len(d.items)} differences[/] in {tests} of {d.compared} compared contract tests"
    )
