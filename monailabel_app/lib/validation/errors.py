"""Errors of the upload checks: each is a ``ValueError`` whose ``status_code`` is the HTTP status to answer."""

from __future__ import annotations

__all__ = [
    "ValidationError",
    "InvalidIdError",
    "NotFoundError",
    "ConflictError",
    "TooLargeError",
    "to_http_exception",
]


class ValidationError(ValueError):
    """Something a client sent cannot be used; the message says what. ``status_code``: HTTP status to answer."""

    status_code = 422


class InvalidIdError(ValidationError):
    """An image id or label tag that is not a safe file name."""

    status_code = 400


class NotFoundError(ValidationError):
    """An image or label id the datastore does not have."""

    status_code = 404


class ConflictError(ValidationError):
    """The request would overwrite something that must be kept (e.g. an annotated image)."""

    status_code = 409


class TooLargeError(ValidationError):
    """A file, a request body or an image beyond the configured limits."""

    status_code = 413


def to_http_exception(error: ValidationError):
    """The FastAPI ``HTTPException`` (status and message) that answers ``error``."""
    from fastapi import HTTPException

    return HTTPException(status_code=error.status_code, detail=str(error))
