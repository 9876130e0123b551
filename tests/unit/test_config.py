"""Settings: defaults, environment, flags, and failing fast on bad values."""

from __future__ import annotations

import argparse
import dataclasses
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from realtime_sync.config import (
    SETTINGS,
    Setting,
    SettingsError,
    add_setting_flags,
    load_settings,
    settings_overrides,
)


def _secret() -> str:
    return secrets.token_urlsafe(40)


def _public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _env(**values: str) -> dict[str, str]:
    return {"JWT_SECRET": _secret(), **values}


def test_defaults_match_the_design() -> None:
    s = load_settings({}, require_jwt=False)
    assert (s.ws_host, s.ws_port, s.app_port) == ("0.0.0.0", 8080, 50051)
    assert (s.pubsub_name, s.topic_name, s.state_store_name) == (
        "pubsub",
        "task-updates",
        "statestore",
    )
    assert s.dead_letter_topic == "task-updates-deadletter"
    assert s.heartbeat_s == 30.0
    assert s.jwt_algorithms == ("HS256",)
    assert (s.jwt_audience, s.jwt_issuer) == ("", "")
    assert s.jwt_leeway_s == 2.0
    assert s.jwt_user_claim == "userId"
    assert s.allowed_origins == ()
    assert (s.outbox_max_messages, s.outbox_max_bytes) == (1000, 1 << 20)
    assert (s.resume_window_s, s.resume_max_events) == (300.0, 1000)
    assert s.dedupe_window_s == 600.0
    assert s.max_frame_bytes == 65536
    assert s.max_connections_per_user == 50
    assert (s.client_rate, s.client_burst) == (20.0, 40.0)
    assert s.max_subscriptions == 1000
    assert s.shares_cache_s == 5.0
    assert s.connection_ttl_s == 60
    assert s.compression == "off"
    assert s.auth_timeout_s == 5.0
    assert s.replica_id


def test_default_settings_need_a_jwt_secret() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load_settings({})


def test_the_dead_letter_topic_follows_the_topic_name() -> None:
    assert load_settings(_env(TOPIC_NAME="orders")).dead_letter_topic == "orders-deadletter"
    explicit = load_settings(_env(TOPIC_NAME="orders", DEAD_LETTER_TOPIC="dlq"))
    assert explicit.dead_letter_topic == "dlq"


def test_environment_values_are_parsed_to_their_types() -> None:
    secret = _secret()
    s = load_settings(
        {
            "JWT_SECRET": secret,
            "WS_PORT": "9000",
            "HEARTBEAT_S": "1.5",
            "JWT_LEEWAY_S": "0",
            "OUTBOX_MAX_BYTES": "2048",
            "ALLOWED_ORIGINS": " https://a.example , https://b.example,, ",
            "COMPRESSION": "deflate",
            "JWT_AUDIENCE": "aud",
            "JWT_ISSUER": "iss",
            "JWT_USER_CLAIM": "uid",
            "LOG_LEVEL": "debug",
            "REPLICA_ID": "replica-7",
        }
    )
    assert s.ws_port == 9000
    assert isinstance(s.ws_port, int)
    assert s.heartbeat_s == 1.5
    assert s.jwt_leeway_s == 0.0
    assert s.outbox_max_bytes == 2048
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.compression == "deflate"
    assert (s.jwt_audience, s.jwt_issuer, s.jwt_user_claim) == ("aud", "iss", "uid")
    assert s.log_level == "debug"
    assert s.replica_id == "replica-7"
    assert s.jwt_key == secret


def test_the_replica_id_defaults_to_the_pod_name_plus_a_suffix() -> None:
    first = load_settings(_env(POD_NAME="pod-a"))
    second = load_settings(_env(POD_NAME="pod-a"))
    assert first.replica_id.startswith("pod-a-")
    assert first.replica_id != second.replica_id


def test_flags_override_the_environment() -> None:
    s = load_settings(
        _env(WS_PORT="9000", TOPIC_NAME="env-topic"),
        {"ws_port": "9100", "topic_name": None},
    )
    assert s.ws_port == 9100
    assert s.topic_name == "env-topic"


def test_every_setting_has_a_flag_and_flags_reach_the_settings() -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    ns = parser.parse_args(["--ws-port", "9200", "--jwt-leeway-s", "5", "--compression", "deflate"])
    s = load_settings(_env(WS_PORT="9000"), settings_overrides(ns))
    assert (s.ws_port, s.jwt_leeway_s, s.compression) == (9200, 5.0, "deflate")
    flags = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public listing
    assert {s.name for s in SETTINGS} <= flags


def _sample(s: Setting) -> tuple[str, object]:
    """A valid value for the setting other than its default: (variable text, parsed)."""
    if s.choices:
        choice = next(c for c in s.choices if c != s.default)
        return choice.upper(), choice
    match s.default:
        case bool():
            return ("no" if s.default else "yes"), not s.default
        case int() | float() if s.maximum is not None:
            return str(s.maximum), type(s.default)(s.maximum)
        case int():
            return str(s.default + 1), s.default + 1
        case tuple():
            return " a.example , b.example,, ", ("a.example", "b.example")
        case _:
            return f"{s.name}-value", f"{s.name}-value"


def test_every_setting_is_read_from_its_variable_and_from_its_flag() -> None:
    samples = {s.name: _sample(s) for s in SETTINGS}
    env = {s.env: samples[s.name][0] for s in SETTINGS}
    from_env = load_settings(env, require_jwt=False)
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    flags = [arg for s in SETTINGS for arg in (f"--{s.name.replace('_', '-')}", env[s.env])]
    from_flags = load_settings({}, settings_overrides(parser.parse_args(flags)), require_jwt=False)
    for s in SETTINGS:
        expected = samples[s.name][1]
        assert getattr(from_env, s.name) == expected, s.env
        assert getattr(from_flags, s.name) == expected, s.env
    assert len(SETTINGS) == len({s.env for s in SETTINGS}) > 40


def test_settings_are_frozen() -> None:
    s = load_settings({}, require_jwt=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ws_port = 1  # type: ignore[misc]


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    configuration = readme[readme.index("## Configuration") :]
    table = configuration[: configuration.index("\n\n", configuration.index("| variable"))]
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in table]
    assert missing == []


def test_the_jwt_key_is_checked_once_per_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public key is parsed at load, not again at every use of `jwt_key`."""
    from realtime_sync.core.auth import check_key_setup

    pem = _public_pem()
    calls: list[str] = []

    def counting(*args: Any) -> str:
        calls.append("check")
        return check_key_setup(*args)

    monkeypatch.setattr("realtime_sync.config.check_key_setup", counting)
    s = load_settings({"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY": pem})
    assert [s.jwt_key for _ in range(3)] == [pem] * 3
    assert calls == ["check"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WS_PORT", "abc"),
        ("WS_PORT", ""),
        ("WS_PORT", "80.5"),
        ("WS_PORT", "70000"),
        ("WS_PORT", "-1"),
        ("APP_PORT", "65536"),
        ("HEARTBEAT_S", "0"),
        ("HEARTBEAT_S", "fast"),
        ("HEARTBEAT_S", "inf"),
        ("JWT_LEEWAY_S", "31"),
        ("JWT_LEEWAY_S", "-1"),
        ("OUTBOX_MAX_MESSAGES", "0"),
        ("OUTBOX_MAX_BYTES", "10"),
        ("RESUME_WINDOW_S", "0"),
        ("RESUME_MAX_EVENTS", "many"),
        ("DEDUPE_WINDOW_S", "100000"),
        ("MAX_FRAME_BYTES", "1"),
        ("MAX_CONNECTIONS_PER_USER", "0"),
        ("CLIENT_RATE", "0"),
        ("CLIENT_BURST", "0.5"),
        ("MAX_SUBSCRIPTIONS", "0"),
        ("CONNECTION_TTL_S", "1"),
        ("COMPRESSION", "gzip"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("TOPIC_NAME", ""),
        ("PUBSUB_NAME", ""),
        ("STATE_STORE_NAME", ""),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_env(**{variable: value}))
    assert variable in str(info.value)


@pytest.mark.parametrize("variable", ["HEARTBEAT_S", "JWT_LEEWAY_S", "CLIENT_RATE", "DRAIN_S"])
def test_nan_is_not_a_number_and_is_refused(variable: str) -> None:
    """'nan' parses as a float but is in no range: it must not slip past the bounds."""
    with pytest.raises(SettingsError) as info:
        load_settings(_env(**{variable: "nan"}))
    assert variable in str(info.value)


def test_a_bad_flag_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="WS_PORT"):
        load_settings(_env(), {"ws_port": "http"})


def test_a_short_jwt_secret_is_refused() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load_settings({"JWT_SECRET": "s" * 31})


def test_mixed_jwt_algorithms_are_refused() -> None:
    env = {
        "JWT_SECRET": _secret(),
        "JWT_PUBLIC_KEY": _public_pem(),
        "JWT_ALGORITHMS": "HS256,ES256",
    }
    with pytest.raises(SettingsError, match="JWT_ALGORITHMS"):
        load_settings(env)


@pytest.mark.parametrize("algorithms", ["none", "HS256,none", "", " , "])
def test_unknown_or_no_jwt_algorithms_are_refused(algorithms: str) -> None:
    with pytest.raises(SettingsError, match="JWT_ALGORITHMS"):
        load_settings(_env(JWT_ALGORITHMS=algorithms))


def test_a_public_key_algorithm_without_a_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY"):
        load_settings({"JWT_ALGORITHMS": "ES256"})


def test_the_public_key_is_read_from_jwt_public_key_file(tmp_path: Path) -> None:
    pem = _public_pem()
    path = tmp_path / "key.pem"
    path.write_text(pem, encoding="utf-8")
    s = load_settings({"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY_FILE": str(path)})
    assert s.jwt_public_key == pem
    assert s.jwt_key == pem
    assert s.jwt_algorithms == ("ES256",)


def test_jwt_public_key_wins_over_the_file(tmp_path: Path) -> None:
    pem = _public_pem()
    s = load_settings(
        {
            "JWT_ALGORITHMS": "ES256",
            "JWT_PUBLIC_KEY": pem,
            "JWT_PUBLIC_KEY_FILE": str(tmp_path / "absent.pem"),
        }
    )
    assert s.jwt_key == pem


def test_a_missing_jwt_public_key_file_is_refused(tmp_path: Path) -> None:
    env = {"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY_FILE": str(tmp_path / "absent.pem")}
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY_FILE"):
        load_settings(env)


def test_a_directory_as_jwt_public_key_file_is_refused(tmp_path: Path) -> None:
    env = {"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY_FILE": str(tmp_path)}
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY_FILE"):
        load_settings(env)


def test_a_binary_jwt_public_key_file_is_refused_naming_the_variable(tmp_path: Path) -> None:
    """A DER (binary) key file is unreadable as PEM text: SettingsError, not UnicodeDecodeError."""
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "key.der"
    path.write_bytes(b"\x30\x82\xff" + der)
    env = {"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY_FILE": str(path)}
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY_FILE"):
        load_settings(env)


def test_require_jwt_false_skips_the_key_check() -> None:
    s = load_settings({"JWT_ALGORITHMS": "RS256"}, require_jwt=False)
    assert s.jwt_algorithms == ("RS256",)


def test_choices_are_case_insensitive() -> None:
    """COMPRESSION=DEFLATE and LOG_LEVEL=INFO mean what they say."""
    settings = load_settings(
        {"JWT_SECRET": "s" * 40, "COMPRESSION": "DEFLATE", "LOG_LEVEL": "INFO"}
    )
    assert (settings.compression, settings.log_level) == ("deflate", "info")
