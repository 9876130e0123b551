"""The Python client's policy against the vectors the browser client runs too.

`clients/vectors/policy.json` is read here and by `clients/js/test/policy.test.mjs`; its
header describes the steps. The clock is the step's `t`: no test here waits.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from realtime_sync.core.client_policy import (
    ClientPolicy,
    DropSilent,
    GiveUp,
    Lapse,
    Ping,
    RecentIds,
    Reconnect,
    RefreshIn,
    SendRefresh,
    Wait,
    backoff_delay,
    refresh_delay,
)
from realtime_sync.core.outcomes import CloseCode

VECTORS: dict[str, Any] = orjson.loads(
    (Path(__file__).resolve().parents[2] / "clients" / "vectors" / "policy.json").read_bytes()
)
Decision = Reconnect | GiveUp | RefreshIn | SendRefresh | Lapse | Ping | Wait | DropSilent | None


def as_vector(decision: Decision) -> dict[str, Any] | None:
    """A decision in the vectors' words (milliseconds)."""
    match decision:
        case None:
            return None
        case Reconnect(attempt, delay_s, code, reason):
            return {
                "action": "reconnect",
                "attempt": attempt,
                "delay_ms": delay_s * 1000,
                "code": code,
                "reason": reason,
            }
        case GiveUp(code, reason):
            return {"action": "give_up", "code": code, "reason": reason}
        case RefreshIn(delay_s):
            return {"action": "refresh_in", "delay_ms": delay_s * 1000}
        case SendRefresh(token):
            return {"action": "send_refresh", "token": token}
        case Lapse(reason):
            return {"action": "lapse", "reason": reason}
        case Ping(check_at):
            return {"action": "ping", "check_at_ms": check_at * 1000}
        case Wait(check_at):
            return {"action": "wait", "check_at_ms": check_at * 1000}
        case DropSilent():
            return {"action": "drop"}
    raise AssertionError(decision)


def new_policy(token: str, random: Callable[[], float]) -> ClientPolicy:
    config = VECTORS["config"]
    return ClientPolicy(
        backoff_base_s=config["backoff_base_ms"] / 1000,
        backoff_cap_s=config["backoff_cap_ms"] / 1000,
        ping_interval_s=config["ping_interval_ms"] / 1000,
        ping_timeout_s=config["ping_timeout_ms"] / 1000,
        renewable_token=token == "provider",
        random=random,
    )


def step(policy: ClientPolicy, s: dict[str, Any]) -> Decision:
    t = s.get("t", 0) / 1000
    match s["do"]:
        case "open":
            return policy.opening(s["token"], t)
        case "token_failed":
            return policy.token_failed(s["error"])
        case "connected":
            return policy.connected(s["exp"], t)
        case "subscribed":
            policy.subscribed()
            return None
        case "closed":
            return policy.closed(s["code"], s["reason"])
        case "frame":
            policy.frame_received(t)
            return None
        case "delivery_started":
            policy.delivery_started()
            return None
        case "delivery_done":
            policy.delivery_done(t)
            return None
        case "watchdog":
            return policy.watchdog(t)
        case "refreshed":
            return policy.refreshed(s["exp"], t)
        case "refresh_token":
            return policy.refresh_token(s["token"], t)
    raise AssertionError(f"unknown step {s['do']!r}")


def run(token: str, steps: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Every step's decision; a reconnect's `delay_ms` is [delay at jitter 0, at jitter 1]."""
    low, high = new_policy(token, lambda: 0.0), new_policy(token, lambda: 1.0)
    decided = []
    for s in steps:
        at_low, at_high = as_vector(step(low, s)), as_vector(step(high, s))
        if at_low is not None and at_high is not None and at_low["action"] == "reconnect":
            at_low["delay_ms"] = [at_low["delay_ms"], at_high.pop("delay_ms")]
            at_high["delay_ms"] = at_low["delay_ms"]
        assert at_low == at_high, "only the delay depends on the jitter"
        decided.append(at_low)
    return decided


def assert_decides(decided: dict[str, Any] | None, expect: dict[str, Any] | None) -> None:
    if expect is None:
        assert decided is None, f"decided {decided}, expected nothing"
        return
    assert decided is not None, f"decided nothing, expected {expect}"
    for key, wanted in expect.items():
        got = decided.get(key)
        if key.endswith("_ms"):
            assert got == pytest.approx(wanted, abs=1e-6), f"{key}: {decided}"
        else:
            assert got == wanted, f"{key}: {decided}"


def test_the_vectors_close_codes_are_the_servers() -> None:
    assert VECTORS["close_codes"] == {code.name: code.value for code in CloseCode}


@pytest.mark.parametrize(
    "row",
    VECTORS["close_table"],
    ids=lambda r: (
        f"{r['code']}-{r['token']}-{'subscribed' if r['subscribed'] else 'unsubscribed'}"
        f"-after{r['failures_before']}"
    ),
)
def test_close_code_and_session_state_decide_the_reconnect(row: dict[str, Any]) -> None:
    steps: list[dict[str, Any]] = []
    for n in range(row["failures_before"]):
        steps += [{"do": "open", "token": f"t{n}"}, {"do": "closed", "code": 1006, "reason": ""}]
    steps.append({"do": "open", "token": "t"})
    if row["subscribed"]:
        steps += [{"do": "connected", "exp": None}, {"do": "subscribed"}]
    steps.append({"do": "closed", "code": row["code"], "reason": "bye"})
    assert_decides(run(row["token"], steps)[-1], row["expect"])


@pytest.mark.parametrize("scenario", VECTORS["scenarios"], ids=lambda s: s["name"])
def test_scenario(scenario: dict[str, Any]) -> None:
    steps = scenario["steps"]
    for n, (s, decided) in enumerate(zip(steps, run(scenario["token"], steps), strict=True)):
        try:
            assert_decides(decided, s.get("expect"))
        except AssertionError as exc:
            raise AssertionError(f"step {n} {s}: {exc}") from None


@pytest.mark.parametrize("vector", VECTORS["dedupe"], ids=lambda v: v["name"])
def test_dedupe(vector: dict[str, Any]) -> None:
    ids = RecentIds(vector["size"])
    assert [[event_id, ids.seen(event_id)] for event_id, _ in vector["seen"]] == vector["seen"]


def test_a_refresh_is_planned_a_fifth_of_the_lifetime_early_at_most_a_minute() -> None:
    assert refresh_delay(1000.0 + 10, 1000.0) == pytest.approx(8.0)
    assert refresh_delay(1000.0 + 3600, 1000.0) == pytest.approx(3540.0)
    assert refresh_delay(1000.0 - 5, 1000.0) == 0.0


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, base=0.5, cap=8.0, random=rng.random) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling
    assert backoff_delay(10_000, base=0.5, cap=8.0, random=rng.random) <= 8.0
