"""What a job request may say, per job type, and what the API answers: the wire schemas of /v1/jobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hybridgate.protocol import Operation

JobType = Literal["image_generation", "video_generation", "lora_training"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
OPERATIONS: dict[str, Operation] = {
    "image_generation": Operation.IMAGE_GENERATION,
    "video_generation": Operation.VIDEO_GENERATION,
    "lora_training": Operation.LORA_TRAINING,
}
LORA_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _http_url(v: str | None, what: str = "a URL") -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError(f"must be {what} starting with http:// or https://")
    return v


class LoraRef(_Strict):
    """A trained LoRA to apply in an image job: one of the caller's own, by name and version (newest if unset)."""

    name: str = Field(pattern=LORA_NAME)
    version: int | None = Field(None, ge=1)
    scale: float = Field(1.0, ge=0, le=4, allow_inf_nan=False)


class ImageInput(_Strict):
    prompt: str = Field(min_length=1, max_length=10_000)
    n: int = Field(1, ge=1, le=4)
    # "1024x768", or a provider preset name (square_hd, landscape_4_3, ...).
    size: str | None = Field(None, pattern=r"^(\d{2,5}x\d{2,5}|[a-z_0-9]{1,32})$")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    steps: int | None = Field(None, ge=1, le=100)
    loras: list[LoraRef] = Field(default_factory=list, max_length=5)

    @field_validator("size")
    @classmethod
    def _sane_size(cls, v: str | None) -> str | None:
        if v and "x" in v and v[0].isdigit():
            w, h = (int(p) for p in v.split("x"))
            if not (64 <= w <= 4096 and 64 <= h <= 4096):
                raise ValueError("width and height must each be from 64 to 4096 pixels")
        return v


class VideoInput(_Strict):
    prompt: str = Field(min_length=1, max_length=10_000)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    duration_s: float = Field(2.0, gt=0, le=60, allow_inf_nan=False)
    image_url: str | None = None

    _url = field_validator("image_url")(_http_url)


class LoraTrainingInput(_Strict):
    """Training images from exactly one source: a zip (URL), a list of image URLs, or a video (URL)."""

    name: str = Field(pattern=LORA_NAME, description="The LoRA's name; each training adds a version")
    images_data_url: str | None = Field(
        None, description="A zip of at least 4 images (with optional .txt captions)"
    )
    image_urls: list[str] | None = Field(None, min_length=4, max_length=200)
    video_url: str | None = Field(None, description="A video; frames are taken at even intervals")
    frames: int = Field(12, ge=4, le=200, description="How many frames to take from a video")
    trigger_word: str | None = Field(None, min_length=1, max_length=100)
    steps: int = Field(1000, ge=1, le=10_000)
    is_style: bool = False

    @field_validator("images_data_url", "video_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("image_urls")
    @classmethod
    def _each_url(cls, v: list[str] | None) -> list[str] | None:
        for u in v or ():
            _http_url(u)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> LoraTrainingInput:
        given = [n for n in ("images_data_url", "image_urls", "video_url") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one source of training images: images_data_url (a zip), image_urls (4 or "
                f"more) or video_url; got {', '.join(given) or 'none'}"
            )
        return self


INPUTS: dict[str, type[BaseModel]] = {
    "image_generation": ImageInput,
    "video_generation": VideoInput,
    "lora_training": LoraTrainingInput,
}


class JobCreate(_Strict):
    type: JobType
    model: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(description="The job's parameters; their schema depends on `type`")
    webhook_url: str | None = Field(
        None, max_length=2000, description="POSTed the final job, signed (Standard Webhooks headers)"
    )
    metadata: dict[str, str] | None = Field(None, description="Yours, returned as given (at most 16 entries)")

    @field_validator("webhook_url")
    @classmethod
    def _hook(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("metadata")
    @classmethod
    def _small(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 entries, keys up to 64 and values up to 512 characters")
        return v


class Artifact(BaseModel):
    role: str
    key: str
    url: str = Field(description="A signed download link from this gateway, valid for a limited time")
    content_type: str
    size: int
    sha256: str


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    type: JobType
    model: str
    status: JobStatus
    step: str
    input: dict[str, Any]
    backend: str | None = None
    provider_request_id: str | None = None
    progress: float = 0.0
    queue_position: int | None = None
    logs: list[dict[str, Any]] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: JobError | None = None
    cost_reserved_usd: float = 0.0
    cost_usd: float | None = Field(None, description="Settled when the job ended")
    attempts: int = 0
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, description="Verifies this job's webhook signatures")
    metadata: dict[str, str] | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    next_after: str | None = Field(None, description="Pass as `after` for the next page")


__all__ = [
    "INPUTS",
    "LORA_NAME",
    "OPERATIONS",
    "TERMINAL",
    "Artifact",
    "ImageInput",
    "Job",
    "JobCreate",
    "JobError",
    "JobList",
    "JobStatus",
    "JobType",
    "LoraRef",
    "LoraTrainingInput",
    "VideoInput",
]
