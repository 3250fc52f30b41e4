"""Every error a provider adapter may raise, in one place.

Adapters translate their SDK's failures into these types; the imagine flow
turns each into one sentence for the user and releases the credits it held.
``code`` is what the ledger records as the generation's error code.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A provider could not produce an image."""

    code = "provider_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail


class ContentBlocked(ProviderError):
    """The provider's safety filter refused the prompt or its output."""

    code = "blocked"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class NoImageReturned(ProviderError):
    """The provider answered, but with no image (text only, or an empty answer)."""

    code = "no_image"


class RateLimited(ProviderError):
    """The provider asked us to slow down (HTTP 429 or a quota)."""

    code = "rate_limited"


class ProviderUnavailable(ProviderError):
    """The provider is down or overloaded (HTTP 5xx, connection failures)."""

    code = "unavailable"


class BadRequest(ProviderError):
    """The provider rejected the request as malformed (HTTP 4xx other than 429)."""

    code = "bad_request"


class ProviderTimeout(ProviderError):
    """The provider did not answer within the generation deadline."""

    code = "timeout"


class ProviderNotConfigured(ProviderError):
    """The provider needs a setting (usually an API key) that is not set."""

    code = "not_configured"
