"""Bearer-token checks of MONAI Label 0.8.5 made to work with PyJWT 2 (``MONAI_LABEL_AUTH_ENABLE=true``).

MONAI Label checks every request's ``Authorization: Bearer <token>`` against the public key of a Keycloak-style
realm (``MONAI_LABEL_AUTH_REALM_URI``) in ``monailabel.endpoints.user.auth.from_token``. That function calls
``jwt.decode`` without ``algorithms=``, which PyJWT 2 refuses, so with auth on every request gets 401, valid
tokens included. ``install_token_decoder`` swaps in a decoder that names the accepted algorithms.

Environment:
    MEDSEGDIFF_AUTH_ALGORITHMS: comma-separated JWT algorithms to accept (default ``RS256``, Keycloak's default),
        e.g. ``RS256,ES256``. Only public-key algorithms: the realm publishes a public key, never a shared secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jwt
import monailabel.endpoints.user.auth as monailabel_auth
import requests
from fastapi import HTTPException, status
from jwt.algorithms import HMACAlgorithm, NoneAlgorithm, get_default_algorithms
from monailabel.config import settings

__all__ = ["ALGORITHMS_ENV", "DEFAULT_ALGORITHMS", "accepted_algorithms", "install_token_decoder"]

logger = logging.getLogger(__name__)

ALGORITHMS_ENV = "MEDSEGDIFF_AUTH_ALGORITHMS"
"""Environment variable that overrides the accepted algorithms (comma-separated)."""

DEFAULT_ALGORITHMS = ("RS256",)

_DECODE_OPTIONS = {"verify_signature": True, "verify_aud": False, "verify_exp": True}
"""The checks of MONAI Label's own ``from_token``."""

_MARK = "_medsegdiff_algorithms"
"""Attribute that marks the installed decoder and holds its algorithms."""


def accepted_algorithms(default: Sequence[str] = DEFAULT_ALGORITHMS) -> tuple[str, ...]:
    """The JWT algorithms to accept: ``MEDSEGDIFF_AUTH_ALGORITHMS`` when set, else ``default``.

    Args:
        default: Algorithms used when the environment variable is unset or empty.

    Raises:
        ValueError: A name PyJWT does not know, ``none``, or a shared-secret (HMAC, ``HS*``) algorithm.
    """
    text = os.environ.get(ALGORITHMS_ENV, "").strip()
    names = tuple(n.strip() for n in text.split(",") if n.strip()) if text else tuple(default)
    available = get_default_algorithms()
    public_key = sorted(n for n, a in available.items() if not isinstance(a, (HMACAlgorithm, NoneAlgorithm)))
    refused = [n for n in names if n not in public_key]
    if refused or not names:
        source = f"{ALGORITHMS_ENV}={text!r}" if text else f"algorithms={tuple(default)!r}"
        raise ValueError(
            f"{source}: cannot accept {refused or 'an empty list'}. Tokens are checked with the realm's public "
            f"key, so use public-key algorithms only: {', '.join(public_key)} (Keycloak's default is RS256)."
        )
    return names


def install_token_decoder(algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> bool:
    """Make MONAI Label's bearer-token check accept valid tokens under PyJWT 2.

    MONAI Label 0.8.5's ``monailabel.endpoints.user.auth.from_token`` calls ``jwt.decode(token, key,
    options=...)`` without ``algorithms=``. PyJWT 2 requires that argument (leaving it out once let a token
    pick its own algorithm, e.g. ``none`` or HS256 signed with the public key), so it raises ``DecodeError``
    and every request, valid token or not, gets 401. ``get_current_user`` looks ``from_token`` up in its module
    at call time, so this replaces it there with the same check (signature and expiry verified, audience not;
    user name, e-mail, name and roles read from the claims that ``MONAI_LABEL_AUTH_TOKEN_*`` name) that passes
    ``algorithms``. Besides, a realm that cannot be reached, or sends no usable public key, gives 503 with a
    message naming ``MONAI_LABEL_AUTH_REALM_URI`` instead of a bare 500.

    Does nothing unless ``MONAI_LABEL_AUTH_ENABLE`` is true (read by MONAI Label when it is imported, so it must
    be in the server's environment). Calling it again is harmless: it installs one decoder, never a chain.

    Args:
        algorithms: Accepted JWT algorithms; ``MEDSEGDIFF_AUTH_ALGORITHMS`` overrides them when set.

    Returns:
        True when the decoder is installed (auth on), False when auth is off.

    Raises:
        ValueError: Bad algorithm names (see ``accepted_algorithms``).
    """
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        logger.debug("MONAI_LABEL_AUTH_ENABLE is off: MONAI Label's token decoder left as it is")
        return False
    names = accepted_algorithms(algorithms)
    if getattr(monailabel_auth.from_token, _MARK, None) != names:
        monailabel_auth.from_token = _token_decoder(names)
        logger.info("+++ Auth: bearer tokens checked against %s with %s", settings.MONAI_LABEL_AUTH_REALM_URI, names)
    return True


def _token_decoder(algorithms: tuple[str, ...]):
    def from_token(token: str) -> monailabel_auth.User:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return monailabel_auth.DEFAULT_USER
        key = _realm_public_key()
        try:
            payload = jwt.decode(token, key, algorithms=list(algorithms), options=_DECODE_OPTIONS)
        except jwt.InvalidKeyError as e:  # the realm's key, not the token, is unusable
            raise _realm_unavailable(f"its public key cannot be used ({e})") from e
        return monailabel_auth.User(
            username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or payload.get("sub") or "",
            email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
            name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
            roles=_roles(payload),
        )

    setattr(from_token, _MARK, algorithms)
    return from_token


def _realm_public_key() -> str:
    """The realm's public key (PEM), fetched once by MONAI Label's cached ``get_public_key``."""
    try:
        return monailabel_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.JSONDecodeError, KeyError, TypeError) as e:
        raise _realm_unavailable(f'its answer is not JSON with a "public_key" ({e!r})') from e
    except requests.RequestException as e:  # refused, timed out, HTTP error, bad URL
        raise _realm_unavailable(f"it cannot be reached ({e})") from e


def _realm_unavailable(reason: str) -> HTTPException:
    message = (
        f"Cannot check the access token: the authentication realm {settings.MONAI_LABEL_AUTH_REALM_URI} "
        f"(MONAI_LABEL_AUTH_REALM_URI) is unavailable: {reason}. Check that the identity provider is running "
        "and that the URI is the realm's, e.g. http://HOST:8080/realms/monailabel."
    )
    logger.error(message)
    return HTTPException(status_code=status.HTTP_503_SERVICE_UNAVAILABLE, detail=message)


def _roles(payload: dict[str, Any]) -> list[str]:
    """The roles at the ``#``-separated claim path ``MONAI_LABEL_AUTH_TOKEN_ROLES`` (``realm_access#roles``)."""
    value: Any = payload
    for key in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(r) for r in value] if isinstance(value, (list, tuple)) else []
