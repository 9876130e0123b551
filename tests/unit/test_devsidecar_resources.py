"""The dev sidecar's reading of a resources folder: the pub/sub inbound policy, as daprd
picks it (dapr/dapr pkg/resiliency/resiliency.go ComponentInboundPolicy)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from realtime_sync.devsidecar.resources import go_duration_s, load_inbound_policy

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, *docs: dict[str, Any]) -> Path:
    for i, doc in enumerate(docs):
        (folder / f"doc{i}.yaml").write_text(json.dumps(doc))
    return folder


def resiliency(spec: dict[str, Any], scopes: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": "r"},
        "spec": spec,
    }
    if scopes is not None:
        doc["scopes"] = scopes
    return doc


def test_the_shipped_components_give_the_pubsub_inbound_retry_and_timeout() -> None:
    policy = load_inbound_policy(
        [ROOT / "components"], app_id="realtime-sync", pubsub_name="pubsub"
    )
    assert policy.retry is not None
    assert (policy.retry.policy, policy.retry.max_retries) == ("exponential", 5)
    assert policy.retry.max_interval_s == 10.0
    assert policy.timeout_s == 15.0


def test_no_resiliency_means_no_retry_and_no_deadline(tmp_path: Path) -> None:
    policy = load_inbound_policy([tmp_path], app_id="app", pubsub_name="pubsub")
    assert (policy.retry, policy.timeout_s) == (None, None)


def test_a_resiliency_scoped_to_another_app_is_ignored(tmp_path: Path) -> None:
    spec = {
        "policies": {"retries": {"r": {"policy": "constant", "maxRetries": 3}}},
        "targets": {"components": {"pubsub": {"inbound": {"retry": "r"}}}},
    }
    write(tmp_path, resiliency(spec, scopes=["someone-else"]))
    policy = load_inbound_policy([tmp_path], app_id="app", pubsub_name="pubsub")
    assert policy.retry is None


def test_default_policies_apply_to_a_component_without_a_target(tmp_path: Path) -> None:
    spec = {
        "policies": {
            "retries": {
                "DefaultRetryPolicy": {"policy": "constant", "duration": "1s"},
                "DefaultComponentInboundRetryPolicy": {"policy": "constant", "duration": "2s"},
            },
            "timeouts": {"DefaultPubsubComponentInboundTimeoutPolicy": "3s"},
        },
    }
    write(tmp_path, resiliency(spec))
    policy = load_inbound_policy([tmp_path], app_id="app", pubsub_name="pubsub")
    assert policy.retry is not None and policy.retry.duration_s == 2.0  # most specific
    assert policy.timeout_s == 3.0


def test_a_target_naming_an_unknown_policy_is_an_error(tmp_path: Path) -> None:
    spec = {"targets": {"components": {"pubsub": {"inbound": {"retry": "missing"}}}}}
    write(tmp_path, resiliency(spec))
    with pytest.raises(ValueError, match="unknown retry policy missing"):
        load_inbound_policy([tmp_path], app_id="app", pubsub_name="pubsub")


def test_exponential_backoff_follows_dapr_kit_defaults(tmp_path: Path) -> None:
    spec = {
        "policies": {"retries": {"r": {"policy": "exponential", "maxInterval": "1s"}}},
        "targets": {"components": {"pubsub": {"inbound": {"retry": "r"}}}},
    }
    write(tmp_path, resiliency(spec))
    retry = load_inbound_policy([tmp_path], app_id="app", pubsub_name="pubsub").retry
    assert retry is not None
    rng = random.Random(1)
    # 500ms x 1.5 per retry, capped at maxInterval, each within +/- 50 %.
    for failures, base in ((1, 0.5), (2, 0.75), (3, 1.0), (9, 1.0)):
        assert 0.5 * base <= retry.delay(failures, rng) <= 1.5 * base
    assert not retry.exhausted(10**6)  # maxRetries defaults to -1: forever


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("200ms", 0.2), ("1m30s", 90.0), ("1.5h", 5400.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "5 s", "1d"])
def test_bad_go_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        go_duration_s(text)
