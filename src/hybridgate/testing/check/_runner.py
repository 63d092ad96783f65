"""Runs the chosen suites in order against one target and collects a Report."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from hybridgate.testing.check import _canary, _contract, _load, _smoke
from hybridgate.testing.check._cases import Case
from hybridgate.testing.check._context import CheckSkipped, Context, TargetUnreachable
from hybridgate.testing.check._options import CheckOptions
from hybridgate.testing.check._report import Report, TestResult

SUITE_CASES: dict[str, list[Case]] = {
    "smoke": _smoke.CASES,
    "contract": _contract.CASES,
    "canary": _canary.CASES,
    "load": _load.CASES,
}


def _unreachable(name: str, why: str, duration: float = 0.0) -> TestResult:
    return TestResult(
        name, "skipped", duration, f"target unreachable: {why}", {"outcome": "unreachable"}, unreachable=True
    )


def _run_case(case: Case, ctx: Context, report: Report) -> TestResult:
    t0 = time.perf_counter()
    try:
        metrics = case.fn(ctx)
        return TestResult(case.name, "passed", time.perf_counter() - t0, None, metrics)
    except TargetUnreachable as e:
        report.unreachable = str(e)
        return _unreachable(case.name, str(e), time.perf_counter() - t0)
    except CheckSkipped as e:
        return TestResult(case.name, "skipped", time.perf_counter() - t0, str(e), e.metrics)
    except AssertionError as e:  # CheckFailed, or an assert in a check
        return TestResult(
            case.name,
            "failed",
            time.perf_counter() - t0,
            str(e) or type(e).__name__,
            getattr(e, "metrics", None),
        )
    except (
        Exception
    ) as e:  # an answer shaped so oddly that a check tripped over it: still the target's failure
        return TestResult(case.name, "failed", time.perf_counter() - t0, f"{type(e).__name__}: {e}")


def run_check(opts: CheckOptions, on_result: Callable[[TestResult], None] | None = None) -> Report:
    """Probe the target, then run every case of every chosen suite; once it is unreachable, skip the rest."""
    report = Report(opts.target, datetime.now(UTC).isoformat(timespec="seconds"))
    t0 = time.perf_counter()
    ctx = Context(opts)
    try:
        try:
            ctx.preflight()
        except TargetUnreachable as e:
            report.unreachable = str(e)
        if "contract" in opts.suites and report.unreachable is None:
            ctx.openai  # noqa: B018 - import the SDK now, so its import time is not charged to the first test
        for suite in opts.suites:
            for case in SUITE_CASES[suite]:
                if report.unreachable is not None:
                    res = _unreachable(case.name, report.unreachable)
                else:
                    res = _run_case(case, ctx, report)
                report.tests.append(res)
                if on_result is not None:
                    on_result(res)
        report.load_test = ctx.load_test
    finally:
        ctx.close()
        report.duration_seconds = time.perf_counter() - t0
    return report
