"""JWT verification with pinned algorithms (RFC 8725): who a connection belongs to."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
import jwt.types

from realtime_sync.core.protocol import MAX_TOKEN_LENGTH

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_HMAC_KEY_BYTES: Final = 32


class AuthError(Exception):
    """A token that does not prove who the client is. The message is safe to send."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float
    issued_at: float | None = None  # the token's `iat`, when it has one


def revoked(identity: Identity, cutoff: int | None) -> bool:
    """Is this token cut off by `disconnect_user`? `cutoff` is the whole Unix second after
    the call, so a token issued up to the call (its `iat`, whole seconds, is then below the
    cutoff) is refused; a token minted in the call's own second is refused too (the safe
    side). A token without `iat` cannot show when it was issued:
    refused while a cutoff holds."""
    if cutoff is None:
        return False
    return identity.issued_at is None or identity.issued_at < cutoff


def check_key_setup(algorithms: Sequence[str], secret: str | None, public_key: str | None) -> str:
    """Validate the algorithm/key pairing at start; return the verification key.

    Raises ValueError naming what is wrong: unknown algorithms, symmetric and asymmetric
    algorithms mixed (the key-confusion trap), a missing key, or a short HMAC secret.
    """
    algs = set(algorithms)
    if not algs:
        raise ValueError("no algorithm configured")
    unknown = algs - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
    if unknown:
        raise ValueError(f"unsupported algorithm(s): {', '.join(sorted(unknown))}")
    if algs <= HMAC_ALGORITHMS:
        if not secret:
            raise ValueError("HMAC algorithms need JWT_SECRET")
        if len(secret.encode()) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_HMAC_KEY_BYTES} bytes")
        return secret
    if algs <= ASYMMETRIC_ALGORITHMS:
        if not public_key or "-----BEGIN" not in public_key:
            raise ValueError(f"{', '.join(sorted(algs))} need a PEM public key (JWT_PUBLIC_KEY)")
        _check_public_key(algs, public_key)
        return public_key
    raise ValueError("do not mix HMAC and public-key algorithms in JWT_ALGORITHMS")


def _check_public_key(algs: set[str], pem: str) -> None:
    """The PEM must load as a public key of the one family the algorithms use."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        load_pem_public_key,
    )

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("JWT_PUBLIC_KEY is not a PEM public key") from None
    families = {
        "RS": rsa.RSAPublicKey,
        "PS": rsa.RSAPublicKey,
        "ES": ec.EllipticCurvePublicKey,
        "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
    }
    for alg in algs:
        if not isinstance(key, families[alg[:2]]):  # type: ignore[arg-type]
            raise ValueError(f"JWT_PUBLIC_KEY does not fit {alg}: one key family per setup")


class TokenVerifier:
    """Verifies a JWT and extracts the user id claim."""

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        key: str,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 2.0,
        user_claim: str = "userId",
        max_lifetime_s: float = 86400.0,
    ) -> None:
        self._algorithms = list(algorithms)
        self._key = key
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_s
        self._user_claim = user_claim
        self._max_lifetime = max_lifetime_s
        required = ["exp"]
        if audience:
            required.append("aud")
        if issuer:
            required.append("iss")
        self._options: jwt.types.Options = {"require": required, "verify_aud": bool(audience)}

    @property
    def leeway_s(self) -> float:
        return self._leeway

    def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity a token proves. A token living longer than `max_lifetime_s`
        (`exp - iat`, or `exp` from now when it has no `iat`) is refused: a cutoff is kept
        that long, so no token outlives it."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("invalid token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            # InvalidTokenError, InvalidKeyError, and odd input (e.g. lone surrogates)
            raise AuthError("invalid token") from None
        user = claims.get(self._user_claim)
        if user is None and self._user_claim != "sub":
            user = claims.get("sub")
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthError("token names no user")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid token")
        try:
            expires_at = float(exp)
        except OverflowError:
            raise AuthError("invalid token") from None
        if not math.isfinite(expires_at):
            raise AuthError("invalid token")
        issued_at = _issued_at(claims.get("iat"))
        start = issued_at if issued_at is not None else (time.time() if now is None else now)
        if expires_at - start > self._max_lifetime:
            raise AuthError("token lifetime too long")
        return Identity(user_id=user, expires_at=expires_at, issued_at=issued_at)


def _issued_at(iat: Any) -> float | None:
    """PyJWT has checked that a present `iat` is a number (and not in the future)."""
    if isinstance(iat, int | float) and not isinstance(iat, bool) and math.isfinite(iat):
        return float(iat)
    return None


def mint_token(
    user_id: str,
    *,
    secret: str,
    ttl_s: int,
    now: float,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    user_claim: str = "userId",
) -> str:
    """An HS256 token for development and tests (`realtime-sync token`)."""
    claims: dict[str, Any] = {
        "sub": user_id,
        user_claim: user_id,
        "iat": int(now),
        "exp": int(now) + ttl_s,
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=algorithm)
