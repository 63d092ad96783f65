"""The named failures of a cloud provider. Every way a provider call can go wrong becomes one of these,
with a message that says what happened and what to do; never a stack trace from an SDK or a parser."""

from __future__ import annotations


class CloudError(Exception):
    """A cloud provider call failed. `retryable`: the same call may succeed later (capacity, 5xx)."""

    retryable = False

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status


class CloudInputError(CloudError, ValueError):
    """A value we were about to send is not acceptable (refused before anything was sent)."""


class CloudAuthError(CloudError):
    """The provider refused the API key (HTTP 401/403), or none is configured."""


class CloudCapacityError(CloudError):
    """No instance with the requested GPU type / data centre is available now."""

    retryable = True


class CloudResumeError(CloudError):
    """A stopped pod cannot be resumed (its host has no free GPU): terminate and re-create it."""

    retryable = True


class CloudNotFoundError(CloudError):
    """The pod does not exist (terminated, or never existed)."""


class CloudUnavailableError(CloudError):
    """The provider's API could not be reached or answered with a server error / an HTML error page."""

    retryable = True


class CloudMalformedError(CloudError):
    """The provider answered, but not in the shape its API documents."""

    retryable = True


class CloudSetupError(CloudError):
    """What the provider needs on this machine is missing (e.g. the SkyPilot environment); the message
    says how to create it."""


class CloudProviderError(CloudError):
    """The provider reported an error of its own (its message is kept)."""


__all__ = [
    "CloudAuthError",
    "CloudCapacityError",
    "CloudError",
    "CloudInputError",
    "CloudMalformedError",
    "CloudNotFoundError",
    "CloudProviderError",
    "CloudResumeError",
    "CloudSetupError",
    "CloudUnavailableError",
]
