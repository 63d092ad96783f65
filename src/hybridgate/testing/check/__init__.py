"""`hybridgate check`: smoke, contract, canary and load suites against any OpenAI-compatible server.

from hybridgate.testing.check import CheckOptions, run_check
report = run_check(CheckOptions.create("http://127.0.0.1:8080/v1", "smoke,canary"))
report.exit_code  # 0 passed, 1 a test failed, 2 target unreachable
"""

from hybridgate.testing.check._context import CheckFailed, CheckSkipped, TargetUnreachable
from hybridgate.testing.check._options import SUITES, CheckConfigError, CheckOptions, parse_duration, root_url
from hybridgate.testing.check._report import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    Report,
    TestResult,
    render_text,
)
from hybridgate.testing.check._runner import SUITE_CASES, run_check

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "SUITES",
    "SUITE_CASES",
    "CheckConfigError",
    "CheckFailed",
    "CheckOptions",
    "CheckSkipped",
    "Report",
    "TargetUnreachable",
    "TestResult",
    "parse_duration",
    "render_text",
    "root_url",
    "run_check",
]
