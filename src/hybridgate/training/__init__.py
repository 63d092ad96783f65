"""Training runs: a Tinker-compatible API and a plain JSON API over LoRA fine-tuning with torch and peft
in worker processes, with costs and budgets, and a data-plane backend serving what was trained.

torch, peft and transformers are imported only in the worker processes (the `training` extra); the
gateway itself starts without them.
"""

from hybridgate.training._client import Client, TrainingAPIError
from hybridgate.training._config import TrainingConfig, TrainingPrice, parse_training
from hybridgate.training._service import StepError, TrainingService

__all__ = [
    "Client",
    "StepError",
    "TrainingAPIError",
    "TrainingConfig",
    "TrainingPrice",
    "TrainingService",
    "parse_training",
]
