"""Costs: prices x usage units, worst-case reservations against budgets, rate limits, the write-behind ledger, usage reports."""

from hybridgate.ledger._budget import BudgetBook
from hybridgate.ledger._cost import DEFAULT_MAX_TOKENS, WorstCase, prompt_token_bound, worst_case
from hybridgate.ledger._ledger import CallPolicy, Ledger
from hybridgate.ledger._limits import RateLimiter
from hybridgate.ledger._pricing import attempt_cost, price_usage
from hybridgate.ledger._recorder import LedgerRecorder
from hybridgate.ledger._usage import GROUPS, usage_report

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GROUPS",
    "BudgetBook",
    "CallPolicy",
    "Ledger",
    "LedgerRecorder",
    "RateLimiter",
    "WorstCase",
    "attempt_cost",
    "price_usage",
    "prompt_token_bound",
    "usage_report",
    "worst_case",
]
