"""Named errors of the model layer.

Every failure a caller can act on has its own class; ``serve_app`` maps them to HTTP statuses in one
place (``serve_app/errors.py``). Nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import ClassVar


class SuperResError(Exception):
    """Base class of every error raised by ``models``. ``code`` names it in API error bodies
    and job records; ``transient`` errors (a resource, not the request) are worth retrying."""

    code: ClassVar[str] = "internal"
    transient: ClassVar[bool] = False


# --- models and weights -------------------------------------------------------------------------


class ModelError(SuperResError):
    """A model cannot be used."""

    code: ClassVar[str] = "model_unavailable"
    transient: ClassVar[bool] = True


class UnknownModelError(ModelError, KeyError):
    """No model of that name is registered."""

    code: ClassVar[str] = "unknown_model"
    transient: ClassVar[bool] = False

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        self.known = known
        hint = f"; known models: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown model {name!r}{hint}")

    def __reduce__(self) -> tuple[type[UnknownModelError], tuple[str, list[str] | None]]:
        return type(self), (self.name, self.known)  # crosses Ray as itself, not re-wrapped

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsUnavailableError(ModelError):
    """No source of a model's weights could be reached (or none is configured)."""


class WeightsVerificationError(ModelError):
    """A weights file does not match its pinned size or sha256."""


class UnsupportedModelError(ModelError):
    """A weights file holds an architecture we cannot load, or one of the wrong kind."""


class ModelNotReadyError(ModelError):
    """The model is known but not loaded on this replica (yet, or because loading failed)."""


class DeviceOutOfMemoryError(SuperResError):
    """The device ran out of memory even at the smallest tile: a transient refusal, retry later."""

    code: ClassVar[str] = "overloaded"
    transient: ClassVar[bool] = True


_PUBLIC_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (WeightsUnavailableError, "its weights could not be fetched from any configured source"),
    (WeightsVerificationError, "its weights file failed verification"),
    (UnsupportedModelError, "its weights hold a model this service cannot run"),
)


def public_reason(exc: Exception) -> str:
    """Why a model cannot be used, in words safe to show a client: no paths, hosts or URLs
    (the full message belongs in the log)."""
    for kind, reason in _PUBLIC_REASONS:
        if isinstance(exc, kind):
            return reason
    return str(exc) if isinstance(exc, ModelNotReadyError) else "it failed to load"


# --- options ------------------------------------------------------------------------------------


class InvalidOptionError(SuperResError, ValueError):
    """A request option is out of range or does not apply to the chosen model."""

    code: ClassVar[str] = "invalid_option"


# --- images -------------------------------------------------------------------------------------


class ImageError(SuperResError):
    """The input is not an image we can process."""

    code: ClassVar[str] = "invalid_image"


class EmptyInputError(ImageError):
    """Zero bytes were sent."""

    code: ClassVar[str] = "empty_input"


class UnsupportedImageTypeError(ImageError):
    """The bytes are not an image format we accept (PNG, JPEG, WebP, and a few others decoded)."""

    code: ClassVar[str] = "unsupported_media_type"


class CorruptImageError(ImageError):
    """The bytes claim a supported format but do not decode (truncated, damaged)."""

    code: ClassVar[str] = "corrupt_image"


class AnimatedImageError(ImageError):
    """Animated images (APNG, animated WebP/GIF) are refused rather than silently flattened."""

    code: ClassVar[str] = "animated_image"


class ImageTooLargeError(ImageError):
    """Input over a byte, pixel or output-size limit; also raised for decompression bombs."""

    code: ClassVar[str] = "too_large"

    def __init__(self, message: str, *, limit: int | None = None, actual: int | None = None):
        super().__init__(message)
        self.limit = limit
        self.actual = actual
