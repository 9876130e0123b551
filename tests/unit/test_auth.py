"""JWT verification with pinned algorithms: who a connection belongs to.

Every key and secret is generated at run time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_sync.core.auth import (
    MIN_HMAC_KEY_BYTES,
    AuthError,
    Identity,
    TokenVerifier,
    check_key_setup,
    mint_token,
    revoked,
)

AUDIENCE = "realtime-sync"
ISSUER = "https://issuer.example"
SAFE_MESSAGES = {"invalid token", "token expired", "token names no user"}


def _pem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class Keys:
    secret: str
    rsa_key: rsa.RSAPrivateKey
    rsa_pem: str
    other_rsa: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    ec_pem: str
    ed_key: ed25519.Ed25519PrivateKey
    ed_pem: str
    now: int

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid claims for the HS verifier (aud and iss configured); None removes a claim."""
        claims: dict[str, Any] = {
            "userId": "alice",
            "iat": self.now,
            "exp": self.now + 300,
            "aud": AUDIENCE,
            "iss": ISSUER,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def hs(self, **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), self.secret, algorithm="HS256")

    def rs(self, **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), self.rsa_key, algorithm="RS256")


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return Keys(
        secret=secrets.token_urlsafe(48),
        rsa_key=rsa_key,
        rsa_pem=_pem(rsa_key.public_key()),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec_key,
        ec_pem=_pem(ec_key.public_key()),
        ed_key=ed_key,
        ed_pem=_pem(ed_key.public_key()),
        now=int(time.time()),
    )


def hs_verifier(keys: Keys, **options: Any) -> TokenVerifier:
    params: dict[str, Any] = {"audience": AUDIENCE, "issuer": ISSUER, "leeway_s": 2.0}
    params.update(options)
    return TokenVerifier(algorithms=["HS256"], key=keys.secret, **params)


def rs_verifier(keys: Keys, **options: Any) -> TokenVerifier:
    params: dict[str, Any] = {"audience": AUDIENCE, "issuer": ISSUER, "leeway_s": 2.0}
    params.update(options)
    return TokenVerifier(algorithms=["RS256"], key=keys.rsa_pem, **params)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: object, payload: object, key: bytes | None = None) -> str:
    """A token built by hand (HS256 signature over the parts when a key is given)."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def raw_hs(keys: Keys, header_extra: dict[str, Any], payload: object) -> str:
    """A token correctly HS256-signed with the real secret, with arbitrary header/payload."""
    return raw_token({"alg": "HS256", "typ": "JWT", **header_extra}, payload, keys.secret.encode())


def _swap_segment(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


def _flip_last_char(segment: str) -> str:
    return segment[:-1] + ("A" if segment[-1] != "A" else "B")


def _oversized(keys: Keys) -> str:
    token = keys.hs(pad="p" * 8192)
    assert len(token) > 8192
    return token


# (name, verifier: "hs" or "rs", token builder)
BAD_TOKENS: list[tuple[str, str, Callable[[Keys], str]]] = [
    ("alg-none", "hs", lambda k: raw_token({"alg": "none", "typ": "JWT"}, k.claims())),
    ("alg-None", "hs", lambda k: raw_token({"alg": "None"}, k.claims())),
    ("alg-NONE", "hs", lambda k: raw_token({"alg": "NONE"}, k.claims())),
    ("alg-nOnE", "hs", lambda k: raw_token({"alg": "nOnE"}, k.claims())),
    ("alg-none-to-rs", "rs", lambda k: raw_token({"alg": "none"}, k.claims())),
    (
        "alg-none-with-signature",
        "hs",
        lambda k: raw_token({"alg": "none"}, k.claims(), k.secret.encode()),
    ),
    ("alg-missing", "hs", lambda k: raw_token({"typ": "JWT"}, k.claims(), k.secret.encode())),
    ("alg-lowercase-hs256", "hs", lambda k: raw_hs(k, {"alg": "hs256"}, k.claims())),
    (
        "key-confusion-hs256-with-rsa-pem-to-rs",
        "rs",
        lambda k: raw_token({"alg": "HS256", "typ": "JWT"}, k.claims(), k.rsa_pem.encode()),
    ),
    (
        "key-confusion-hs256-with-rsa-pem-to-hs",
        "hs",
        lambda k: raw_token({"alg": "HS256", "typ": "JWT"}, k.claims(), k.rsa_pem.encode()),
    ),
    (
        "wrong-secret",
        "hs",
        lambda k: jwt.encode(k.claims(), secrets.token_urlsafe(48), algorithm="HS256"),
    ),
    ("wrong-aud", "hs", lambda k: k.hs(aud="someone-else")),
    ("aud-list-without-ours", "hs", lambda k: k.hs(aud=["a", "b"])),
    ("aud-containing-ours", "hs", lambda k: k.hs(aud=AUDIENCE + "-evil")),
    ("missing-aud", "hs", lambda k: k.hs(aud=None)),
    ("wrong-iss", "hs", lambda k: k.hs(iss="https://evil.example")),
    ("iss-containing-the-real-one", "hs", lambda k: k.hs(iss=ISSUER + ".evil.example")),
    ("iss-prefixed-by-the-real-one", "hs", lambda k: k.hs(iss="evil-" + ISSUER)),
    ("iss-substring-of-the-real-one", "hs", lambda k: k.hs(iss="issuer.example")),
    ("iss-a-list", "hs", lambda k: raw_hs(k, {}, k.claims(iss=[ISSUER]))),
    ("missing-iss", "hs", lambda k: k.hs(iss=None)),
    ("expired-beyond-leeway", "hs", lambda k: k.hs(exp=k.now - 60)),
    ("expired-rs", "rs", lambda k: k.rs(exp=k.now - 60)),
    ("nbf-future-beyond-leeway", "hs", lambda k: k.hs(nbf=k.now + 60)),
    ("missing-exp", "hs", lambda k: k.hs(exp=None)),
    ("exp-numeric-string", "hs", lambda k: k.hs(exp=str(k.now + 300))),
    ("exp-word", "hs", lambda k: k.hs(exp="tomorrow")),
    ("exp-null", "hs", lambda k: raw_hs(k, {}, {**k.claims(), "exp": None})),
    ("exp-list", "hs", lambda k: k.hs(exp=[k.now + 300])),
    ("iat-garbage", "hs", lambda k: k.hs(iat="soon")),
    ("no-user-claim", "hs", lambda k: k.hs(userId=None)),
    ("empty-user-claim", "hs", lambda k: k.hs(userId="")),
    ("user-claim-a-number", "hs", lambda k: k.hs(userId=12345)),
    ("user-claim-a-list", "hs", lambda k: k.hs(userId=["alice"])),
    ("user-claim-too-long", "hs", lambda k: k.hs(userId="u" * 257)),
    ("sub-fallback-a-number", "hs", lambda k: k.hs(userId=None, sub=7)),
    ("unknown-crit-header", "hs", lambda k: raw_hs(k, {"crit": ["x-custom"]}, k.claims())),
    ("crit-not-a-list", "hs", lambda k: raw_hs(k, {"crit": "exp"}, k.claims())),
    ("payload-not-an-object", "hs", lambda k: raw_hs(k, {}, [k.claims()])),
    ("payload-a-string", "hs", lambda k: raw_hs(k, {}, "alice")),
    ("header-not-an-object", "hs", lambda k: raw_token(["HS256"], k.claims(), k.secret.encode())),
    (
        "header-not-json",
        "hs",
        lambda k: _swap_segment(k.hs(), 0, b64(b"not json")),
    ),
    ("malformed-base64-header", "hs", lambda k: _swap_segment(k.hs(), 0, "!!!*&^")),
    ("malformed-base64-payload", "hs", lambda k: _swap_segment(k.hs(), 1, "%%%")),
    ("malformed-base64-signature", "hs", lambda k: _swap_segment(k.hs(), 2, "~~~")),
    ("two-part-token", "hs", lambda k: ".".join(k.hs().split(".")[:2])),
    ("four-part-token", "hs", lambda k: k.hs() + ".AAAA"),
    ("one-part-token", "hs", lambda k: k.hs().split(".")[0]),
    ("only-dots", "hs", lambda _: ".."),
    ("token-over-8-KiB", "hs", _oversized),
    ("empty-string", "hs", lambda _: ""),
    ("whitespace", "hs", lambda _: "   "),
    ("bearer-prefix-kept", "hs", lambda k: "Bearer " + k.hs()),
    ("es256-to-hs-only", "hs", lambda k: jwt.encode(k.claims(), k.ec_key, algorithm="ES256")),
    ("rs256-to-hs-only", "hs", lambda k: k.rs()),
    ("hs512-with-right-secret", "hs", lambda k: jwt.encode(k.claims(), k.secret, "HS512")),
    ("hs256-to-rs-only", "rs", lambda k: k.hs()),
    ("ps256-to-rs256-only", "rs", lambda k: jwt.encode(k.claims(), k.rsa_key, algorithm="PS256")),
    ("rs256-other-key", "rs", lambda k: jwt.encode(k.claims(), k.other_rsa, algorithm="RS256")),
    ("eddsa-to-rs", "rs", lambda k: jwt.encode(k.claims(), k.ed_key, algorithm="EdDSA")),
    (
        "tampered-payload",
        "hs",
        lambda k: _swap_segment(k.hs(), 1, k.hs(userId="mallory").split(".")[1]),
    ),
    (
        "tampered-payload-rs",
        "rs",
        lambda k: _swap_segment(k.rs(), 1, k.rs(userId="mallory").split(".")[1]),
    ),
    (
        "tampered-signature",
        "hs",
        lambda k: _swap_segment(k.hs(), 2, _flip_last_char(k.hs().split(".")[2])),
    ),
    (
        "tampered-signature-rs",
        "rs",
        lambda k: _swap_segment(k.rs(), 2, _flip_last_char(k.rs().split(".")[2])),
    ),
    ("signature-stripped", "hs", lambda k: _swap_segment(k.hs(), 2, "")),
    (
        "kid-path-traversal-bad-signature",
        "hs",
        lambda k: raw_token({"alg": "HS256", "kid": "../../x"}, k.claims(), b"x" * 32),
    ),
    (
        "jku-elsewhere-bad-signature",
        "rs",
        lambda k: raw_token({"alg": "HS256", "jku": "https://evil.example/jwks"}, k.claims(), b"k"),
    ),
]


@pytest.mark.parametrize(
    ("verifier", "build"), [(v, b) for _, v, b in BAD_TOKENS], ids=[n for n, _, _ in BAD_TOKENS]
)
def test_a_bad_token_is_rejected_with_auth_error(
    keys: Keys, verifier: str, build: Callable[[Keys], str]
) -> None:
    token = build(keys)
    check = hs_verifier(keys) if verifier == "hs" else rs_verifier(keys)
    with pytest.raises(AuthError) as info:
        check.verify(token)
    assert str(info.value) in SAFE_MESSAGES


def test_the_bad_token_matrix_has_at_least_thirty_cases() -> None:
    assert len({name for name, _, _ in BAD_TOKENS}) == len(BAD_TOKENS) >= 30


def test_an_expired_token_says_token_expired(keys: Keys) -> None:
    with pytest.raises(AuthError, match=r"^token expired$"):
        hs_verifier(keys).verify(keys.hs(exp=keys.now - 60))


def test_a_token_without_a_user_says_it_names_no_user(keys: Keys) -> None:
    with pytest.raises(AuthError, match=r"^token names no user$"):
        hs_verifier(keys).verify(keys.hs(userId=None))


# --- accepted tokens ---------------------------------------------------------------------


def test_the_hs_control_token_is_accepted(keys: Keys) -> None:
    """The bad-token matrix differs from this accepted token in one respect each."""
    assert hs_verifier(keys).verify(keys.hs()) == Identity(
        "alice", float(keys.now + 300), float(keys.now)
    )


def test_the_rs_control_token_is_accepted(keys: Keys) -> None:
    assert rs_verifier(keys).verify(keys.rs()) == Identity(
        "alice", float(keys.now + 300), float(keys.now)
    )


def test_the_user_id_claim_wins_over_sub(keys: Keys) -> None:
    assert hs_verifier(keys).verify(keys.hs(userId="alice", sub="other")).user_id == "alice"


def test_sub_is_the_fallback_user_claim(keys: Keys) -> None:
    assert hs_verifier(keys).verify(keys.hs(userId=None, sub="bob")).user_id == "bob"


def test_a_custom_user_claim_is_used(keys: Keys) -> None:
    check = hs_verifier(keys, user_claim="uid")
    assert check.verify(keys.hs(uid="carol", userId="alice", sub="x")).user_id == "carol"


def test_a_custom_user_claim_falls_back_to_sub_not_to_user_id(keys: Keys) -> None:
    check = hs_verifier(keys, user_claim="uid")
    assert check.verify(keys.hs(userId="alice", sub="dave")).user_id == "dave"
    with pytest.raises(AuthError):
        check.verify(keys.hs(userId="alice"))


def test_sub_as_the_configured_claim(keys: Keys) -> None:
    check = hs_verifier(keys, user_claim="sub")
    assert check.verify(keys.hs(userId="alice", sub="erin")).user_id == "erin"


def test_a_token_expired_within_the_leeway_is_accepted(keys: Keys) -> None:
    check = hs_verifier(keys, leeway_s=30.0)
    assert check.leeway_s == 30.0
    identity = check.verify(keys.hs(exp=int(time.time()) - 10))
    assert identity.user_id == "alice"


def test_an_nbf_within_the_leeway_is_accepted(keys: Keys) -> None:
    check = hs_verifier(keys, leeway_s=30.0)
    assert check.verify(keys.hs(nbf=int(time.time()) + 10)).user_id == "alice"


def test_an_aud_list_containing_ours_is_accepted(keys: Keys) -> None:
    assert hs_verifier(keys).verify(keys.hs(aud=["other", AUDIENCE])).user_id == "alice"


def test_aud_and_iss_are_not_required_when_not_configured(keys: Keys) -> None:
    check = TokenVerifier(algorithms=["HS256"], key=keys.secret)
    assert check.verify(keys.hs(aud=None, iss=None)).user_id == "alice"


def test_exp_is_required_even_without_aud_or_iss(keys: Keys) -> None:
    check = TokenVerifier(algorithms=["HS256"], key=keys.secret)
    with pytest.raises(AuthError):
        check.verify(keys.hs(aud=None, iss=None, exp=None))


def test_a_fractional_exp_is_accepted_and_reported(keys: Keys) -> None:
    identity = hs_verifier(keys).verify(keys.hs(exp=keys.now + 300.5))
    assert identity.expires_at == keys.now + 300.5


def test_es256_tokens_verify_with_an_ec_public_key(keys: Keys) -> None:
    check = TokenVerifier(algorithms=["ES256"], key=keys.ec_pem)
    token = jwt.encode(keys.claims(aud=None, iss=None), keys.ec_key, algorithm="ES256")
    assert check.verify(token).user_id == "alice"


def test_eddsa_tokens_verify_with_an_ed25519_public_key(keys: Keys) -> None:
    check = TokenVerifier(algorithms=["EdDSA"], key=keys.ed_pem)
    token = jwt.encode(keys.claims(aud=None, iss=None), keys.ed_key, algorithm="EdDSA")
    assert check.verify(token).user_id == "alice"


def test_mint_token_output_verifies(keys: Keys) -> None:
    now = time.time()
    token = mint_token(
        "frank", secret=keys.secret, ttl_s=120, now=now, audience=AUDIENCE, issuer=ISSUER
    )
    assert hs_verifier(keys).verify(token) == Identity(
        "frank", float(int(now) + 120), float(int(now))
    )


def test_mint_token_with_a_custom_claim_verifies_with_that_claim(keys: Keys) -> None:
    token = mint_token("gina", secret=keys.secret, ttl_s=60, now=time.time(), user_claim="uid")
    check = TokenVerifier(algorithms=["HS256"], key=keys.secret, user_claim="uid")
    assert check.verify(token).user_id == "gina"
    assert jwt.decode(token, options={"verify_signature": False})["uid"] == "gina"


def test_mint_token_in_the_past_is_expired(keys: Keys) -> None:
    token = mint_token("hal", secret=keys.secret, ttl_s=10, now=time.time() - 3600)
    with pytest.raises(AuthError, match="expired"):
        TokenVerifier(algorithms=["HS256"], key=keys.secret).verify(token)


# --- robustness --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_rejected_with_auth_error_only(token: str) -> None:
    check = TokenVerifier(algorithms=["HS256"], key="k" * 40)
    with pytest.raises(AuthError) as info:
        check.verify(token)
    assert str(info.value) in SAFE_MESSAGES


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["kid", "typ", "crit", "b64", "x"]), st.text(max_size=5)
    ),
    payload=st.dictionaries(
        st.sampled_from(["userId", "sub", "exp", "nbf", "iat", "aud", "iss"]),
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    ),
)
def test_any_correctly_signed_claims_give_an_identity_or_an_auth_error(
    keys: Keys, header: dict[str, str], payload: dict[str, object]
) -> None:
    token = raw_hs(keys, header, payload)
    try:
        identity = hs_verifier(keys).verify(token)
    except AuthError as exc:
        assert str(exc) in SAFE_MESSAGES
    else:
        assert identity.user_id in {payload.get("userId"), payload.get("sub")}
        assert identity.expires_at == payload["exp"]


def test_a_token_with_a_lone_surrogate_is_rejected_with_auth_error() -> None:
    """verify() takes any str: one that cannot be UTF-8 encoded is an AuthError too."""
    token = "eyJ" + chr(0xDC80) + ".e30.sig"
    check = TokenVerifier(algorithms=["HS256"], key="k" * 40)
    with pytest.raises(AuthError):
        check.verify(token)


def test_a_validly_signed_token_with_an_absurd_exp_is_rejected_with_auth_error(
    keys: Keys,
) -> None:
    """A signed token whose exp does not fit a float is an AuthError, not an OverflowError."""
    token = keys.hs(exp=10**400)
    with pytest.raises(AuthError):
        hs_verifier(keys).verify(token)


def test_an_rsa_key_set_up_for_rs256_and_es256_is_refused_at_start(keys: Keys) -> None:
    """One key family per setup: an RSA key cannot also verify ES256."""
    with pytest.raises(ValueError, match="does not fit ES256"):
        check_key_setup(["RS256", "ES256"], None, keys.rsa_pem)


def test_an_ec_token_to_a_verifier_holding_an_rsa_key_is_an_auth_error(keys: Keys) -> None:
    """Even if misconfigured past check_key_setup, pyjwt's InvalidKeyError never escapes."""
    check = TokenVerifier(algorithms=["RS256", "ES256"], key=keys.rsa_pem)
    assert check.verify(keys.rs(aud=None, iss=None)).user_id == "alice"
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(keys.claims(aud=None, iss=None), attacker, algorithm="ES256")
    with pytest.raises(AuthError):
        check.verify(token)


# --- key setup ---------------------------------------------------------------------------


def test_check_key_setup_returns_a_long_enough_secret() -> None:
    secret = secrets.token_hex(16)  # 32 bytes
    assert check_key_setup(["HS256"], secret, None) == secret
    assert check_key_setup(["HS256", "HS512"], secret, "ignored") == secret


def test_check_key_setup_counts_the_secret_in_bytes() -> None:
    assert MIN_HMAC_KEY_BYTES == 32
    secret = "é" * 16  # 16 characters, 32 bytes
    assert check_key_setup(["HS256"], secret, None) == secret


@pytest.mark.parametrize("secret", [None, "", "s", "s" * 31], ids=repr)
def test_check_key_setup_rejects_missing_or_short_secrets(secret: str | None) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        check_key_setup(["HS256"], secret, None)


def test_check_key_setup_returns_the_public_key(keys: Keys) -> None:
    assert check_key_setup(["RS256"], None, keys.rsa_pem) == keys.rsa_pem
    assert check_key_setup(["ES256"], "unused-secret", keys.ec_pem) == keys.ec_pem
    assert check_key_setup(["EdDSA"], None, keys.ed_pem) == keys.ed_pem


@pytest.mark.parametrize("public_key", [None, "", "not a pem", "MIIBIjANBgkqhkiG9w0B"], ids=repr)
def test_check_key_setup_rejects_missing_public_keys(public_key: str | None) -> None:
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        check_key_setup(["RS256"], secrets.token_hex(32), public_key)


@pytest.mark.parametrize(
    "algorithms", [["HS256", "RS256"], ["RS256", "HS256"], ["ES256", "HS512"], ["HS384", "EdDSA"]]
)
def test_check_key_setup_rejects_mixing_hmac_and_public_key_algorithms(
    keys: Keys, algorithms: list[str]
) -> None:
    with pytest.raises(ValueError, match="mix"):
        check_key_setup(algorithms, keys.secret, keys.rsa_pem)


@pytest.mark.parametrize(
    "algorithms", [["none"], ["None"], ["hs256"], ["HS1"], ["RS256", "XYZ"], ["HS256", ""]]
)
def test_check_key_setup_rejects_unknown_algorithms(keys: Keys, algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        check_key_setup(algorithms, keys.secret, keys.rsa_pem)


def test_check_key_setup_rejects_no_algorithm(keys: Keys) -> None:
    with pytest.raises(ValueError, match="no algorithm"):
        check_key_setup([], keys.secret, None)


def test_check_key_setup_rejects_a_pem_block_that_is_not_a_public_key() -> None:
    """A PEM that cannot be loaded must fail at start, not make every handshake raise."""
    garbage = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        check_key_setup(["RS256"], None, garbage)


def test_a_token_living_longer_than_the_maximum_is_refused(keys: Keys) -> None:
    check = hs_verifier(keys, max_lifetime_s=600)
    assert check.verify(keys.hs(exp=keys.now + 600)).user_id == "alice"
    with pytest.raises(AuthError, match="lifetime"):
        check.verify(keys.hs(exp=keys.now + 601))


def test_a_token_without_iat_counts_its_lifetime_from_now(keys: Keys) -> None:
    check = hs_verifier(keys, max_lifetime_s=600)
    identity = check.verify(keys.hs(iat=None, exp=keys.now + 300), keys.now)
    assert identity.issued_at is None
    with pytest.raises(AuthError, match="lifetime"):
        check.verify(keys.hs(iat=None, exp=keys.now + 900), keys.now)


def test_revoked_refuses_tokens_issued_before_the_cutoff_and_those_without_iat() -> None:
    assert not revoked(Identity("a", 10.0, 5.0), None)
    assert not revoked(Identity("a", 10.0, None), None)
    assert revoked(Identity("a", 10.0, 4.0), 5)
    assert not revoked(Identity("a", 10.0, 5.0), 5)
    assert revoked(Identity("a", 10.0, None), 5)
