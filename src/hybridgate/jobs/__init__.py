"""Durable generation jobs (images, videos, LoRA training): leased rows in the database, in-process workers,
results mirrored into storage. See `_engine.py` for the design and docs/architecture.md for why."""

from hybridgate.jobs._engine import JobEngine, LeaseLost, new_job_id
from hybridgate.jobs._models import (
    INPUTS,
    OPERATIONS,
    TERMINAL,
    ImageInput,
    Job,
    JobCreate,
    JobList,
    LoraTrainingInput,
)

__all__ = [
    "INPUTS",
    "OPERATIONS",
    "TERMINAL",
    "ImageInput",
    "Job",
    "JobCreate",
    "JobEngine",
    "JobList",
    "LeaseLost",
    "LoraTrainingInput",
    "new_job_id",
]
