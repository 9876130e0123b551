"""The shipped deployment configuration is valid and consistent.

- Every Kubernetes manifest validates, offline, against the Kubernetes JSON schemas bundled
  in ``kubernetes-validate`` (strict: unknown fields are errors).
- Every Dapr resource (Component, Resiliency, Subscription, Configuration) is checked
  against the fields daprd accepts. The field names come from dapr/dapr
  (``pkg/apis/*/v1alpha1/types.go``, ``pkg/apis/common``), the metadata keys from
  dapr/components-contrib (``pubsub/redis``, ``state/redis`` ``metadata.yaml``,
  ``common/component/kafka/metadata.go``), the templates from dapr/dapr
  ``pkg/runtime/meta/meta.go``, the annotations from ``pkg/injector/annotations``, and
  the run-file keys from dapr/cli (``pkg/runfileconfig``, ``pkg/standalone/run.go``).
  The checker is deliberately small; ``test_the_dapr_checker_rejects`` proves it fails.
- The values agree with each other and with the service's settings (timeouts, worker
  counts, shutdown budget, names), and the Dockerfile's HEALTHCHECK works against a real
  service.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bench.common import free_port
from realtime_sync.config import SETTINGS
from realtime_sync.dev import DEV_CONCURRENCY
from realtime_sync.service import DRAIN_BUDGET_S
from tests.integration.conftest import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes we claim (native preStop `sleep` is on by default since 1.30) and
# the newest the bundled schemas know.
K8S_VERSIONS = ("1.30", "1.37")
APP_ID = "realtime-sync"
DEFAULTS = {s.env: s.default for s in SETTINGS}

# --- what Dapr accepts ------------------------------------------------------------------

DAPR_API_VERSIONS = {
    "Component": {"dapr.io/v1alpha1"},
    "Resiliency": {"dapr.io/v1alpha1"},
    "Configuration": {"dapr.io/v1alpha1"},
    "Subscription": {"dapr.io/v1alpha1", "dapr.io/v2alpha1"},
}
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "scopes", "auth"}
OBJECT_META = {"name", "namespace", "labels", "annotations"}
COMPONENT_SPEC = {"type", "version", "metadata", "ignoreErrors", "initTimeout"}
NAME_VALUE = {"name", "value", "secretKeyRef", "envRef"}
SUBSCRIPTION_SPEC = {
    "pubsubname",
    "topic",
    "metadata",
    "routes",
    "deadLetterTopic",
    "bulkSubscribe",
}
CONFIGURATION_SPEC = {
    "appHttpPipeline",
    "httpPipeline",
    "tracing",
    "metric",
    "metrics",
    "mtls",
    "secrets",
    "accessControl",
    "nameResolution",
    "features",
    "api",
    "components",
    "logging",
    "wasm",
    "workflow",
}
RETRY_FIELDS = {"policy", "duration", "maxInterval", "maxRetries", "matching"}
MATCHING_FIELDS = {"httpStatusCodes", "gRPCStatusCodes"}
BREAKER_FIELDS = {"maxRequests", "interval", "timeout", "trip"}
POLICY_NAMES = {"timeout", "retry", "circuitBreaker"}
ENDPOINT_POLICY_NAMES = POLICY_NAMES | {"circuitBreakerCacheSize"}
ACTOR_POLICY_NAMES = ENDPOINT_POLICY_NAMES | {"circuitBreakerScope"}
# Templates daprd expands in any component metadata value (pkg/runtime/meta/meta.go).
TEMPLATES = {"uuid", "podName", "namespace", "appID"}

# Metadata keys by component type, with a kind for the value check: s(tring), n(umber),
# d(uration), b(ool). `consumerID` is read by daprd itself for every pub/sub (it defaults
# to the app id); `keyPrefix`/`actorStateStore` by daprd for every state store.
_REDIS_COMMON = {
    "redisHost": "s",
    "redisPassword": "s",
    "redisUsername": "s",
    "enableTLS": "b",
    "clientCert": "s",
    "clientKey": "s",
    "failover": "b",
    "sentinelMasterName": "s",
    "redeliverInterval": "d",
    "processingTimeout": "d",
    "redisType": "s",
    "redisDB": "n",
    "redisMaxRetries": "n",
    "redisMinRetryInterval": "d",
    "redisMaxRetryInterval": "d",
    "dialTimeout": "d",
    "readTimeout": "d",
    "writeTimeout": "d",
    "poolSize": "n",
    "poolTimeout": "d",
    "maxConnAge": "d",
    "minIdleConns": "n",
    "idleCheckFrequency": "d",
    "idleTimeout": "d",
    "useEntraID": "b",
}
COMPONENT_KEYS: dict[str, dict[str, str]] = {
    "pubsub.redis": {
        **_REDIS_COMMON,
        "consumerID": "s",
        "sentinelUsername": "s",
        "sentinelPassword": "s",
        "ackOnError": "b",
        "queueDepth": "n",
        "concurrency": "n",
        "maxLenApprox": "n",
        "streamTTL": "d",
    },
    "state.redis": {
        **_REDIS_COMMON,
        "keyPrefix": "s",
        "actorStateStore": "b",
        "ttlInSeconds": "n",
        "queryIndexes": "s",
    },
    "pubsub.kafka": {
        "consumerID": "s",
        "brokers": "s",
        "consumerGroup": "s",
        "clientID": "s",
        "clientId": "s",
        "authType": "s",
        "authRequired": "b",
        "saslUsername": "s",
        "saslPassword": "s",
        "saslMechanism": "s",
        "initialOffset": "s",
        "maxMessageBytes": "n",
        "consumeRetryInterval": "s",
        "consumeRetryEnabled": "b",
        "heartbeatInterval": "d",
        "sessionTimeout": "d",
        "version": "s",
        "caCert": "s",
        "clientCert": "s",
        "clientKey": "s",
        "skipVerify": "b",
        "disableTls": "b",
        "escapeHeaders": "b",
        "oidcTokenEndpoint": "s",
        "oidcClientID": "s",
        "oidcClientSecret": "s",
        "oidcScopes": "s",
        "oidcExtensions": "s",
        "channelBufferSize": "n",
        "consumerFetchMin": "n",
        "consumerFetchDefault": "n",
        "valueSchemaType": "s",
        "clientConnectionTopicMetadataRefreshInterval": "d",
        "clientConnectionKeepAliveInterval": "d",
        "awsRegion": "s",
        "awsAccessKey": "s",
        "awsSecretKey": "s",
        "awsSessionToken": "s",
        "awsIamRoleArn": "s",
        "awsStsSessionName": "s",
        "schemaRegistryURL": "s",
        "schemaRegistryAPIKey": "s",
        "schemaRegistryAPISecret": "s",
        "schemaCachingEnabled": "b",
        "schemaLatestVersionCacheTTL": "d",
    },
}
REQUIRED_KEYS = {
    "pubsub.redis": {"redisHost"},
    "state.redis": {"redisHost"},
    "pubsub.kafka": {"brokers", "authType"},
}
KAFKA_AUTH_TYPES = {"none", "password", "mtls", "oidc", "certificate", "awsiam"}

# dapr/cli run file: RunFileConfig, App (RunConfig + SharedRunConfig + container fields).
RUN_FILE_TOP = {"version", "common", "apps", "name"}
RUN_SHARED = {
    "configFilePath",
    "appProtocol",
    "apiListenAddresses",
    "enableProfiling",
    "logLevel",
    "appMaxConcurrency",
    "placementHostAddress",
    "resourcesPath",
    "resourcesPaths",
    "appSSL",
    "maxBodySize",
    "readBufferSize",
    "enableAppHealthCheck",
    "appHealthCheckPath",
    "appHealthProbeInterval",
    "appHealthProbeTimeout",
    "appHealthThreshold",
    "enableApiLogging",
    "runtimePath",
    "env",
    "daprdLogDestination",
    "appLogDestination",
    "schedulerHostAddress",
}
RUN_APP = RUN_SHARED | {
    "appID",
    "appChannelAddress",
    "appPort",
    "daprHTTPPort",
    "daprGRPCPort",
    "profilePort",
    "command",
    "metricsPort",
    "unixDomainSocket",
    "daprInternalGRPCPort",
    "appDirPath",
    "containerImage",
    "containerImagePullPolicy",
    "createService",
}
APP_PROTOCOLS = {"http", "grpc", "https", "grpcs", "h2c"}
LOG_DESTINATIONS = {"file", "console", "fileAndConsole"}

# dapr/dapr pkg/injector/annotations: the annotations this project uses or may use.
DAPR_ANNOTATIONS = {
    "dapr.io/enabled",
    "dapr.io/app-id",
    "dapr.io/app-port",
    "dapr.io/app-protocol",
    "dapr.io/app-channel-address",
    "dapr.io/config",
    "dapr.io/log-level",
    "dapr.io/log-as-json",
    "dapr.io/enable-app-health-check",
    "dapr.io/app-health-check-path",
    "dapr.io/app-health-probe-interval",
    "dapr.io/app-health-probe-timeout",
    "dapr.io/app-health-threshold",
    "dapr.io/app-max-concurrency",
    "dapr.io/graceful-shutdown-seconds",
    "dapr.io/block-shutdown-duration",
    "dapr.io/api-token-secret",
    "dapr.io/app-token-secret",
    "dapr.io/grpc-port",
    "dapr.io/max-body-size",
    "dapr.io/read-buffer-size",
    "dapr.io/enable-metrics",
    "dapr.io/metrics-port",
    "dapr.io/enable-api-logging",
    "dapr.io/sidecar-listen-addresses",
    "dapr.io/env",
    "dapr.io/sidecar-cpu-limit",
    "dapr.io/sidecar-cpu-request",
    "dapr.io/sidecar-memory-limit",
    "dapr.io/sidecar-memory-request",
    "dapr.io/disable-builtin-k8s-secret-store",
}

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def go_duration_s(text: str) -> float:
    """Seconds in a Go duration string ("1m30s", "200ms"); ValueError if not one."""
    if text == "0":
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f"not a Go duration: {text!r}")
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(n) * scale[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    )


def _unknown(where: str, got: dict[str, Any], allowed: set[str]) -> list[str]:
    return [f"{where}: unknown field {key!r}" for key in sorted(set(got) - allowed)]


def _mapping(where: str, value: Any) -> tuple[dict[str, Any], list[str]]:
    if isinstance(value, dict):
        return value, []
    return {}, [f"{where}: expected a mapping, got {type(value).__name__}"]


def dapr_problems(doc: dict[str, Any]) -> list[str]:
    """What daprd would reject (or silently ignore) in one Dapr resource."""
    problems: list[str] = []
    kind = doc.get("kind")
    if kind not in DAPR_API_VERSIONS:
        return [f"unknown kind {kind!r}"]
    if doc.get("apiVersion") not in DAPR_API_VERSIONS[kind]:
        problems.append(f"{kind}: apiVersion {doc.get('apiVersion')!r} not accepted")
    problems += _unknown(kind, doc, TOP_LEVEL)
    meta, errs = _mapping("metadata", doc.get("metadata"))
    problems += errs + _unknown("metadata", meta, OBJECT_META)
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"metadata.name {name!r} is not a valid resource name")
    scopes = doc.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        problems.append("scopes: expected a list of app ids")
    if "auth" in doc:
        auth, errs = _mapping("auth", doc["auth"])
        problems += errs + _unknown("auth", auth, {"secretStore"})
    spec, errs = _mapping("spec", doc.get("spec"))
    problems += errs
    if kind == "Component":
        problems += _component_problems(spec)
    elif kind == "Resiliency":
        problems += _resiliency_problems(spec)
    elif kind == "Subscription":
        problems += _subscription_problems(spec)
    else:
        problems += _unknown("spec", spec, CONFIGURATION_SPEC)
        tracing, errs = _mapping("spec.tracing", spec.get("tracing", {}))
        problems += errs
        rate = tracing.get("samplingRate")
        if rate is not None and not (isinstance(rate, str) and _is_float(rate)):
            problems.append("spec.tracing.samplingRate: must be a number in a string")
    return problems


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _component_problems(spec: dict[str, Any]) -> list[str]:
    problems = _unknown("spec", spec, COMPONENT_SPEC)
    ctype = spec.get("type")
    if not isinstance(ctype, str) or "." not in ctype:
        return [*problems, f"spec.type {ctype!r}: expected <kind>.<name>"]
    if not re.fullmatch(r"v\d+(alpha\d+|beta\d+)?", str(spec.get("version"))):
        problems.append(f"spec.version {spec.get('version')!r}: expected v1, v2, ...")
    known = COMPONENT_KEYS.get(ctype)
    if known is None:
        problems.append(f"spec.type {ctype!r}: this checker does not know its metadata")
        known = {}
    by_lower = {k.lower(): (k, kind) for k, kind in known.items()}
    items = spec.get("metadata", [])
    if not isinstance(items, list):
        return [*problems, "spec.metadata: expected a list of name/value pairs"]
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"spec.metadata[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        problems += _unknown(where, item, NAME_VALUE)
        key = item.get("name")
        if not isinstance(key, str) or not key:
            problems.append(f"{where}: missing name")
            continue
        if key.lower() in seen:
            problems.append(f"{where}: duplicate key {key!r}")
        seen.add(key.lower())
        sources = [s for s in ("value", "secretKeyRef", "envRef") if s in item]
        if len(sources) != 1:
            problems.append(f"{key}: exactly one of value, secretKeyRef, envRef")
            continue
        if known and key.lower() not in by_lower:
            problems.append(f"{key}: not a metadata key of {ctype}")
            continue
        if sources[0] == "secretKeyRef":
            ref, errs = _mapping(f"{key}.secretKeyRef", item["secretKeyRef"])
            problems += errs + _unknown(f"{key}.secretKeyRef", ref, {"name", "key"})
            if not ref.get("name"):
                problems.append(f"{key}.secretKeyRef: missing name")
            continue
        if sources[0] == "envRef":
            continue
        value = item["value"]
        if not isinstance(value, str):
            # YAML turns `true`/`10` into non-strings; quote every value (house rule).
            problems.append(f"{key}: value must be a quoted string, got {value!r}")
            continue
        for template in re.findall(r"\{([^{}]*)\}", value):
            if template not in TEMPLATES:
                problems.append(f"{key}: unknown template {{{template}}}")
        problems += _value_problems(key, value, by_lower.get(key.lower(), (key, "s"))[1])
    for required in sorted(REQUIRED_KEYS.get(ctype, set())):
        if required.lower() not in seen:
            problems.append(f"{ctype}: required key {required!r} missing")
    values = {i.get("name"): i.get("value") for i in items if isinstance(i, dict)}
    if ctype == "pubsub.kafka" and values.get("authType", "none") not in KAFKA_AUTH_TYPES:
        problems.append(f"authType {values.get('authType')!r} not accepted")
    if ctype == "pubsub.kafka" and values.get("initialOffset", "newest") not in {
        "newest",
        "oldest",
    }:
        problems.append("initialOffset: newest or oldest")
    return problems


def _value_problems(key: str, value: str, kind: str) -> list[str]:
    if value == "" or "{" in value:
        return []
    if kind == "n" and not re.fullmatch(r"-?\d+", value):
        return [f"{key}: {value!r} is not a number"]
    if kind == "b" and value.lower() not in {"true", "false", "1", "0"}:
        return [f"{key}: {value!r} is not a bool"]
    if kind == "d":
        try:
            go_duration_s(value)
        except ValueError:
            if not re.fullmatch(r"-?\d+", value):  # dapr/kit also accepts bare seconds
                return [f"{key}: {value!r} is not a duration"]
    return []


def _resiliency_problems(spec: dict[str, Any]) -> list[str]:
    problems = _unknown("spec", spec, {"policies", "targets"})
    policies, errs = _mapping("spec.policies", spec.get("policies"))
    problems += errs + _unknown(
        "spec.policies", policies, {"timeouts", "retries", "circuitBreakers"}
    )
    timeouts, errs = _mapping("timeouts", policies.get("timeouts", {}))
    problems += errs
    for name, value in timeouts.items():
        try:
            go_duration_s(str(value))
        except ValueError:
            problems.append(f"timeouts.{name}: {value!r} is not a duration")
    retries, errs = _mapping("retries", policies.get("retries", {}))
    problems += errs
    for name, body in retries.items():
        retry, errs = _mapping(f"retries.{name}", body)
        problems += errs + _unknown(f"retries.{name}", retry, RETRY_FIELDS)
        if retry.get("policy") not in {"constant", "exponential"}:
            problems.append(f"retries.{name}.policy: constant or exponential")
        for field in ("duration", "maxInterval"):
            if field in retry:
                try:
                    go_duration_s(str(retry[field]))
                except ValueError:
                    problems.append(f"retries.{name}.{field}: not a duration")
        if not isinstance(retry.get("maxRetries", -1), int):
            problems.append(f"retries.{name}.maxRetries: an integer")
        matching, errs = _mapping(f"retries.{name}.matching", retry.get("matching", {}))
        problems += errs + _unknown(f"retries.{name}.matching", matching, MATCHING_FIELDS)
        for field, codes in matching.items():
            if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", str(codes)):
                problems.append(f"retries.{name}.matching.{field}: comma list or ranges")
    breakers, errs = _mapping("circuitBreakers", policies.get("circuitBreakers", {}))
    problems += errs
    for name, body in breakers.items():
        breaker, errs = _mapping(f"circuitBreakers.{name}", body)
        problems += errs + _unknown(f"circuitBreakers.{name}", breaker, BREAKER_FIELDS)
        if "trip" in breaker and not re.search(
            r"consecutiveFailures|requests|totalFailures", str(breaker["trip"])
        ):
            problems.append(f"circuitBreakers.{name}.trip: not a trip expression")
    defined = {"timeout": set(timeouts), "retry": set(retries), "circuitBreaker": set(breakers)}
    targets, errs = _mapping("spec.targets", spec.get("targets"))
    problems += errs + _unknown("spec.targets", targets, {"apps", "actors", "components"})

    def check_names(where: str, names: dict[str, Any], allowed: set[str]) -> None:
        problems.extend(_unknown(where, names, allowed))
        for field in POLICY_NAMES & set(names):
            if names[field] not in defined[field]:
                problems.append(f"{where}.{field}: no {field} policy named {names[field]!r}")

    for group, allowed in (("apps", ENDPOINT_POLICY_NAMES), ("actors", ACTOR_POLICY_NAMES)):
        entries, errs = _mapping(f"targets.{group}", targets.get(group, {}))
        problems += errs
        for name, body in entries.items():
            names, errs = _mapping(f"targets.{group}.{name}", body)
            problems += errs
            check_names(f"targets.{group}.{name}", names, allowed)
    components, errs = _mapping("targets.components", targets.get("components", {}))
    problems += errs
    for name, body in components.items():
        directions, errs = _mapping(f"targets.components.{name}", body)
        problems += errs + _unknown(
            f"targets.components.{name}", directions, {"inbound", "outbound"}
        )
        for direction, names_body in directions.items():
            names, errs = _mapping(f"targets.components.{name}.{direction}", names_body)
            problems += errs
            check_names(f"targets.components.{name}.{direction}", names, POLICY_NAMES)
    return problems


def _subscription_problems(spec: dict[str, Any]) -> list[str]:
    problems = _unknown("spec", spec, SUBSCRIPTION_SPEC)
    for field in ("pubsubname", "topic"):
        if not isinstance(spec.get(field), str):
            problems.append(f"spec.{field}: required")
    routes, errs = _mapping("spec.routes", spec.get("routes", {}))
    problems += errs + _unknown("spec.routes", routes, {"rules", "default"})
    for i, rule in enumerate(routes.get("rules", [])):
        problems += _unknown(f"spec.routes.rules[{i}]", rule, {"match", "path"})
    bulk, errs = _mapping("spec.bulkSubscribe", spec.get("bulkSubscribe", {}))
    problems += errs + _unknown(
        "spec.bulkSubscribe", bulk, {"enabled", "maxMessagesCount", "maxAwaitDurationMs"}
    )
    return problems


def run_file_problems(doc: dict[str, Any], base: Path) -> list[str]:
    """What `dapr run -f` would reject or ignore in a run file."""
    problems = _unknown("run file", doc, RUN_FILE_TOP)
    if doc.get("version") != 1:
        problems.append("version: must be 1")
    common, errs = _mapping("common", doc.get("common", {}))
    problems += errs + _unknown("common", common, RUN_SHARED)
    apps = doc.get("apps")
    if not isinstance(apps, list) or not apps:
        return [*problems, "apps: a non-empty list"]
    ids: list[str] = []
    ports: list[int] = []
    for i, body in enumerate(apps):
        app, errs = _mapping(f"apps[{i}]", body)
        problems += errs + _unknown(f"apps[{i}]", app, RUN_APP)
        ids.append(str(app.get("appID")))
        if "appDirPath" not in app:
            problems.append(f"apps[{i}]: appDirPath is required")
        elif not (base / app["appDirPath"]).is_dir():
            problems.append(f"apps[{i}].appDirPath: no such folder")
        if app.get("appProtocol", common.get("appProtocol", "http")) not in APP_PROTOCOLS:
            problems.append(f"apps[{i}].appProtocol: not one of {sorted(APP_PROTOCOLS)}")
        command = app.get("command")
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            problems.append(f"apps[{i}].command: a list of strings")
        for section in (common, app):
            for field in ("daprdLogDestination", "appLogDestination"):
                if field in section and section[field] not in LOG_DESTINATIONS:
                    problems.append(f"{field}: one of {sorted(LOG_DESTINATIONS)}")
            env = section.get("env", {})
            if not isinstance(env, dict) or not all(
                isinstance(v, str | int | float | bool) for v in env.values()
            ):
                problems.append("env: a mapping of names to scalar values")
        for field in ("appPort", "daprHTTPPort", "daprGRPCPort", "metricsPort"):
            if field in app:
                if not isinstance(app[field], int):
                    problems.append(f"apps[{i}].{field}: an integer")
                else:
                    ports.append(app[field])
        app_dir = base / str(app.get("appDirPath", "."))
        for path in [*common.get("resourcesPaths", []), *app.get("resourcesPaths", [])]:
            if not (app_dir / path).is_dir():
                problems.append(f"resourcesPaths: {path!r} does not exist")
    if len(set(ids)) != len(ids):
        problems.append(f"apps: duplicate appID in {ids}")
    if len(set(ports)) != len(ports):
        problems.append(f"apps: two apps use the same port: {sorted(ports)}")
    return problems


# --- loading ------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def dapr_files() -> list[Path]:
    found = [
        *sorted((ROOT / "components").rglob("*.yaml")),
        *sorted((K8S_DIR / "dapr").glob("*.yaml")),
    ]
    assert len(found) >= 8, found
    return found


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(load_all(path)):
            # Dapr's and the Prometheus Operator's resources are checked by their own tests.
            if not str(doc.get("apiVersion", "")).startswith(
                ("dapr.io/", "monitoring.coreos.com/")
            ):
                yield f"{path.relative_to(ROOT)}#{i}", doc


def by_kind(kind: str, folder: Path = K8S_DIR) -> dict[str, Any]:
    found = [d for p in folder.rglob("*.yaml") for d in load_all(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under {folder}: {len(found)}"
    return found[0]


def metadata_values(component: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("secretKeyRef"))
        for item in component["spec"]["metadata"]
    }


def component(path: Path) -> dict[str, Any]:
    [doc] = load_all(path)
    return doc


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_matches_the_kubernetes_schema(version: str) -> None:
    docs = list(k8s_documents())
    kinds = {doc["kind"] for _, doc in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "ServiceAccount",
    } <= kinds
    failures = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{where}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


def test_the_schema_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(by_kind("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = copy.deepcopy(by_kind("Deployment"))
    deployment["spec"]["template"]["metadata"]["annotations"]["dapr.io/app-port"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest_and_generates_the_settings() -> None:
    [kustomization] = load_all(K8S_DIR / "kustomization.yaml")
    allowed = {
        "apiVersion",
        "kind",
        "resources",
        "labels",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
        "images",
        "namespace",
        "patches",
        "replicas",
        "commonAnnotations",
        "namePrefix",
        "nameSuffix",
        "components",
    }
    assert set(kustomization) <= allowed, set(kustomization) - allowed
    assert kustomization["kind"] == "Kustomization"
    listed = {K8S_DIR / r for r in kustomization["resources"]}
    assert all(p.is_file() for p in listed), [str(p) for p in listed if not p.is_file()]
    on_disk = {p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    # Everything ships except the placeholder Secrets, which are created by hand.
    assert on_disk - listed == {K8S_DIR / "secrets.example.yaml"}
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [generated] = kustomization["configMapGenerator"]
    assert container["envFrom"] == [{"configMapRef": {"name": generated["name"]}}]
    settings = dict(line.split("=", 1) for line in generated["literals"])
    known_env = {s.env for s in SETTINGS}
    assert set(settings) <= known_env, set(settings) - known_env
    [image] = kustomization["images"]
    assert image["name"] == container["image"]


def _deployment_parts() -> tuple[dict[str, Any], dict[str, str], dict[str, Any], dict[str, str]]:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    [kustomization] = load_all(K8S_DIR / "kustomization.yaml")
    settings = dict(
        line.split("=", 1) for line in kustomization["configMapGenerator"][0]["literals"]
    )
    return pod["spec"], pod["metadata"]["annotations"], container, settings


def test_deployment_runs_the_service_as_dapr_expects() -> None:
    pod, annotations, container, settings = _deployment_parts()
    assert set(annotations) <= DAPR_ANNOTATIONS, set(annotations) - DAPR_ANNOTATIONS
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == APP_ID
    assert annotations["dapr.io/app-protocol"] == "grpc"
    assert annotations["dapr.io/enable-app-health-check"] == "true"
    env = {e["name"]: e for e in container["env"]}
    assert int(annotations["dapr.io/app-port"]) == int(env["APP_PORT"]["value"]) == 50051
    # daprd never has more calls in flight than the app has handler threads: pub/sub
    # deliveries are bounded by the component's `concurrency` (app-max-concurrency does
    # not apply to them on a gRPC app channel), invocations by app-max-concurrency.
    # In bulk mode (the default) daprd's default bulk subscriber makes one bulk call at a
    # time per subscription (dapr/dapr pkg/runtime/pubsub/default_bulksub.go
    # processBulkMessagesBatch), and `concurrency` caps a batch: it must let a batch fill.
    concurrency = int(metadata_values(component(K8S_DIR / "dapr" / "pubsub.yaml"))["concurrency"])
    invocations = int(annotations["dapr.io/app-max-concurrency"])
    declared = {s.env: s for s in SETTINGS}
    bulk = declared["BULK_SUBSCRIBE"]
    if bulk.parse(settings.get(bulk.env, str(bulk.default))):
        max_messages = declared["BULK_MAX_MESSAGES"]
        assert concurrency >= int(settings.get(max_messages.env, max_messages.default))
        deliveries = 1
    else:
        deliveries = concurrency
    assert deliveries + invocations <= int(settings["APP_WORKERS"])
    # The probe daprd sends: 500 ms timeout, 3 misses (the app answers on its own pool).
    assert annotations.get("dapr.io/app-health-probe-timeout", "500") == "500"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["ws"] == int(env["WS_PORT"]["value"]) == 8080
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ws"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ws"}
    deployment = by_kind("Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_shutdown_budget_fits_in_the_termination_grace_period() -> None:
    """daprd (pkg/runtime/runtime.go Run): stop subscriptions (in-flight deliveries end,
    each capped by the resiliency deliver timeout), block until block-shutdown-duration or
    the app reports unhealthy, then close within graceful-shutdown-seconds. The app stays
    healthy until its last state write, which must fall inside daprd's block."""
    pod, annotations, container, _ = _deployment_parts()
    grace = pod["terminationGracePeriodSeconds"]
    block = go_duration_s(annotations["dapr.io/block-shutdown-duration"])
    daprd_graceful = int(annotations["dapr.io/graceful-shutdown-seconds"])
    [resiliency] = load_all(K8S_DIR / "dapr" / "resiliency.yaml")
    inbound = resiliency["spec"]["targets"]["components"]["pubsub"]["inbound"]
    deliver = go_duration_s(resiliency["spec"]["policies"]["timeouts"][inbound["timeout"]])
    assert deliver + block + daprd_graceful < grace
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    app_last_write = pre_stop + DRAIN_BUDGET_S
    assert app_last_write < block, (app_last_write, block)
    assert app_last_write < grace


def test_the_builtin_secret_store_is_off_whenever_the_token_automount_is() -> None:
    """daprd always loads the built-in Kubernetes secret store, which needs the service
    account token, and exits when it fails (pkg/runtime/components.go
    appendBuiltinSecretStore) unless dapr.io/disable-builtin-k8s-secret-store is true."""
    pod, annotations, _, _ = _deployment_parts()
    account = by_kind("ServiceAccount")
    automount = pod.get(
        "automountServiceAccountToken", account.get("automountServiceAccountToken", True)
    )
    if automount is False:
        assert annotations.get("dapr.io/disable-builtin-k8s-secret-store") == "true"
    # The components' secretKeyRefs still resolve: the operator fills those that use the
    # kubernetes store (pkg/runtime/processor/secret/secret.go ProcessResource).
    for path in (K8S_DIR / "dapr").glob("*.yaml"):
        for doc in load_all(path):
            if doc["kind"] == "Component" and any(
                "secretKeyRef" in item for item in doc["spec"].get("metadata", [])
            ):
                assert doc.get("auth", {}).get("secretStore", "kubernetes") == "kubernetes"


def test_every_pubsub_component_is_scoped_to_the_service() -> None:
    """An unscoped component is loaded by every app in the namespace, which would inherit
    the per-instance consumerID and receive every event instead of competing for them."""
    found = 0
    for path in [*dapr_files()]:
        for doc in load_all(path):
            if doc["kind"] == "Component" and doc["spec"]["type"].startswith("pubsub."):
                found += 1
                scopes = doc.get("scopes") or []
                assert APP_ID in scopes, path
                assert set(scopes) <= {APP_ID, "realtime-sync-demo"}, (path, scopes)
    assert found == 3


def test_secrets_are_placeholders_and_match_what_the_pods_read() -> None:
    secrets = {d["metadata"]["name"]: d for d in load_all(K8S_DIR / "secrets.example.yaml")}
    for secret in secrets.values():
        assert "data" not in secret, "placeholders only, as stringData"
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE-ME"), value
    _, annotations, container, _ = _deployment_parts()
    wanted = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    # The injector reads the key `token` of the secrets named in the annotations.
    wanted |= {
        (annotations["dapr.io/api-token-secret"], "token"),
        (annotations["dapr.io/app-token-secret"], "token"),
    }
    for component_path in (K8S_DIR / "dapr").glob("*.yaml"):
        for item in component(component_path).get("spec", {}).get("metadata", []):
            if isinstance(item, dict) and "secretKeyRef" in item:
                ref = item["secretKeyRef"]
                wanted.add((ref["name"], ref["key"]))
    provided = {(name, key) for name, s in secrets.items() for key in s["stringData"]}
    assert wanted == provided
    env_names = {e["name"] for e in container["env"]}
    assert {"JWT_SECRET", "DAPR_API_TOKEN", "APP_API_TOKEN"} <= env_names


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 8080
    assert port["targetPort"] == "ws"
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot roll without a full reconnect"


# --- Dapr resources -----------------------------------------------------------------------


@pytest.mark.parametrize("path", dapr_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dapr_resource_uses_only_fields_dapr_accepts(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "each file explains itself in a comment"
    for doc in load_all(path):
        assert dapr_problems(doc) == []


def _redis_pubsub() -> dict[str, Any]:
    return component(ROOT / "components" / "pubsub.yaml")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["spec"]["metadata"].append({"name": "maxLenAprox", "value": "1"}),
            "not a metadata key",
        ),
        (
            lambda d: d["spec"]["metadata"].append({"name": "concurrency", "value": "2"}),
            "duplicate",
        ),
        (
            lambda d: d["spec"]["metadata"].append({"name": "queueDepth", "value": 10}),
            "quoted string",
        ),
        (
            lambda d: d["spec"]["metadata"].append({"name": "streamTTL", "value": "10 min"}),
            "not a duration",
        ),
        (
            lambda d: d["spec"]["metadata"].append({"name": "consumerID", "value": "{pod}"}),
            "template",
        ),
        (lambda d: d["spec"].update(metdata=[]), "unknown field 'metdata'"),
        (lambda d: d["spec"].update(type="pubsub"), "expected <kind>.<name>"),
        (lambda d: d["metadata"].update(name="Pub_Sub"), "valid resource name"),
        (lambda d: d.update(apiVersion="dapr.io/v1"), "apiVersion"),
    ],
)
def test_the_dapr_checker_rejects(mutate: Any, expected: str) -> None:
    doc = _redis_pubsub()
    mutate(doc)
    problems = dapr_problems(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda s: s["targets"]["components"]["pubsub"]["inbound"].update(retry="nope"),
            "no retry policy",
        ),
        (lambda s: s["targets"]["components"]["pubsub"].update(input={}), "unknown field 'input'"),
        (
            lambda s: s["policies"]["retries"]["pubsubRetry"].update(maxInterval="10"),
            "not a duration",
        ),
        (
            lambda s: s["policies"]["retries"]["pubsubRetry"].update(policy="linear"),
            "constant or exponential",
        ),
        (
            lambda s: s["policies"]["retries"]["stateRetry"].update(
                matching={"grpcStatusCodes": "4"}
            ),
            "unknown field",
        ),
        (lambda s: s["policies"]["circuitBreakers"]["stateCB"].update(tripp="x"), "unknown field"),
    ],
)
def test_the_resiliency_checker_rejects(mutate: Any, expected: str) -> None:
    [doc] = load_all(ROOT / "components" / "resiliency.yaml")
    mutate(doc["spec"])
    problems = dapr_problems(doc)
    assert any(expected in p for p in problems), problems


def test_every_replica_gets_its_own_consumer_group() -> None:
    local = metadata_values(_redis_pubsub())
    cluster = metadata_values(component(K8S_DIR / "dapr" / "pubsub.yaml"))
    kafka = metadata_values(component(ROOT / "components" / "kafka" / "pubsub.yaml"))
    # Without a per-instance template daprd uses the app id: competing consumers.
    assert local["consumerID"] in {"{uuid}", "{podName}"}
    assert cluster["consumerID"] == "{podName}"
    assert kafka["consumerID"] == "{podName}"
    assert "consumerGroup" not in kafka, "consumerGroup would override the per-pod group"
    assert kafka["initialOffset"] == "newest"
    for redis in (local, cluster):
        # A new Redis group replays the retained stream: it must be bounded.
        assert 0 < int(redis["maxLenApprox"]) <= 100_000


def test_names_and_timeouts_agree_with_the_service() -> None:
    names = {"pubsub": DEFAULTS["PUBSUB_NAME"], "statestore": DEFAULTS["STATE_STORE_NAME"]}
    for folder in (ROOT / "components", K8S_DIR / "dapr"):
        comps = {
            d["spec"]["type"].split(".")[0]: d["metadata"]["name"]
            for p in folder.glob("*.yaml")
            for d in load_all(p)
            if d["kind"] == "Component"
        }
        assert comps == {"pubsub": names["pubsub"], "state": names["statestore"]}
    kafka = component(ROOT / "components" / "kafka" / "pubsub.yaml")
    assert kafka["metadata"]["name"] == names["pubsub"]
    [local] = load_all(ROOT / "components" / "resiliency.yaml")
    [cluster] = load_all(K8S_DIR / "dapr" / "resiliency.yaml")
    assert local["spec"] == cluster["spec"], "the two resiliency files drifted apart"
    assert local["scopes"] == cluster["scopes"] == [APP_ID]
    policies = local["spec"]["policies"]
    targets = local["spec"]["targets"]["components"]
    inbound = targets[names["pubsub"]]["inbound"]
    # Required: without an inbound retry, a RETRY answer goes straight to the dead letter.
    retry = policies["retries"][inbound["retry"]]
    assert retry["policy"] == "exponential"
    assert retry["maxRetries"] >= 3
    # daprd must not cut a call the app is still allowed to spend routing.
    deliver = go_duration_s(policies["timeouts"][inbound["timeout"]])
    assert deliver > DEFAULTS["HANDLER_TIMEOUT_S"]
    state = targets[names["statestore"]]["outbound"]
    assert {"timeout", "retry", "circuitBreaker"} <= set(state)
    assert go_duration_s(policies["timeouts"][state["timeout"]]) >= DEFAULTS["DAPR_TIMEOUT_S"]
    # daprd matches status codes only on errors that carry one (pkg/resiliency/policy.go,
    # retry.go CodeError): never on a state store's. `matching` there would mislead.
    for target in targets.values():
        for direction in target.values():
            if "retry" in direction and direction is not inbound:
                assert "matching" not in policies["retries"][direction["retry"]]
    # Redis must not hand a message out again while daprd is still retrying it: the
    # worst hold is every attempt running into the deliver timeout plus every backoff at
    # its randomised maximum (dapr/kit exponential defaults: 500ms x 1.5, +/- 50 %).
    backoff = sum(
        min(0.5 * 1.5**k, go_duration_s(retry["maxInterval"])) * 1.5
        for k in range(retry["maxRetries"])
    )
    worst_hold = (retry["maxRetries"] + 1) * deliver + backoff
    for pubsub in (_redis_pubsub(), component(K8S_DIR / "dapr" / "pubsub.yaml")):
        values = metadata_values(pubsub)
        assert go_duration_s(values["processingTimeout"]) > worst_hold, worst_hold
        # The component reads redeliverInterval only as milliseconds: a duration string
        # is silently ignored (components-contrib common/component/redis/settings.go,
        # `mapstructure:"-"`; redis.go ParseClientFromProperties).
        assert re.fullmatch(r"\d+", values.get("redeliverInterval", "0")), values


def test_dapr_run_file_uses_only_run_file_fields() -> None:
    [doc] = load_all(ROOT / "dapr.yaml")
    assert run_file_problems(doc, ROOT) == []
    service = next(a for a in doc["apps"] if a["appID"] == APP_ID)
    assert service["appProtocol"] == "grpc"
    assert service["appPort"] == DEFAULTS["APP_PORT"]
    assert "JWT_SECRET" not in service.get("env", {}), "secrets come from the shell"
    # daprd's app health probe as deployment.yaml sets it, and the config file exists.
    assert service["enableAppHealthCheck"] is True
    assert (service["appHealthProbeTimeout"], service["appHealthThreshold"]) == (500, 3)
    assert service["appHealthProbeInterval"] * 1000 > service["appHealthProbeTimeout"]
    assert service["logLevel"] in {"debug", "info", "warn", "error"}
    [config] = load_all(ROOT / service["appDirPath"] / service["configFilePath"])
    assert config["kind"] == "Configuration" and dapr_problems(config) == []
    broken = copy.deepcopy(doc)
    broken["apps"][0]["appProt"] = "grpc"
    broken["common"]["resourcesPaths"] = ["./no-such-folder"]
    problems = run_file_problems(broken, ROOT)
    assert any("appProt" in p for p in problems)
    assert any("no-such-folder" in p for p in problems)


# --- container image ----------------------------------------------------------------------


def _dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[str]] = []
    for line in logical:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(regex(body).match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [base] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert "slim" in base
    assert all(
        stage[0] in {"FROM ${PYTHON_IMAGE}", "FROM ${PYTHON_IMAGE} AS build"} for stage in stages
    )
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage must set a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, non-root (runAsNonRoot can check it)"
    joined = "\n".join(final).lower()
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in joined, f"{tool!r} in the final stage"
    assert any(line.upper().startswith("COPY --FROM=") for line in final)
    assert any(line.upper().startswith("HEALTHCHECK ") for line in final)
    assert "curl" not in joined and "wget" not in joined


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in _dockerfile_stages():
        for line in stage:
            if line.upper().startswith("COPY ") and "--from" not in line.lower():
                copied += line.split()[1:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is excluded from the context"
    assert not _dockerignored("realtime_sync/config.py", patterns)
    for private in (
        ".venv/bin/python",
        ".git/config",
        "tests/integration/conftest.py",
        "test-artifacts/service.log",
        ".env",
        "realtime_sync/__pycache__/config.cpython-311.pyc",
        "deploy/kubernetes/secrets.example.yaml",
    ):
        assert _dockerignored(private, patterns), private


def _healthcheck_command() -> list[str]:
    final = _dockerfile_stages()[-1]
    [line] = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
    exec_form = line[line.index("CMD") + 3 :].strip()
    command = yaml.safe_load(exec_form)  # a JSON array is valid YAML
    assert isinstance(command, list) and command[0] == "python", command
    return [sys.executable, *command[1:]]


def test_the_image_healthcheck_passes_on_a_live_service_and_fails_without_one(
    stack: ServiceProcess,
) -> None:
    command = _healthcheck_command()
    env = {**stack.env, "WS_PORT": str(stack.ws_port)}
    alive = subprocess.run(command, env=env, capture_output=True, timeout=10, check=False)
    assert alive.returncode == 0, alive.stderr
    env["WS_PORT"] = str(free_port())  # nothing listens there
    dead = subprocess.run(command, env=env, capture_output=True, timeout=10, check=False)
    assert dead.returncode != 0


def test_local_batches_can_fill() -> None:
    """Redis has no native bulk: daprd's default bulk subscriber caps a batch at the
    component's `concurrency` (dapr/dapr pkg/runtime/pubsub/default_bulksub.go), so the
    local component lets a batch of BULK_MAX_MESSAGES form, and `realtime-sync dev` gives
    the dev sidecar the same number of delivery workers."""
    concurrency = int(
        metadata_values(component(ROOT / "components" / "pubsub.yaml"))["concurrency"]
    )
    max_messages = next(s for s in SETTINGS if s.env == "BULK_MAX_MESSAGES").default
    assert concurrency >= max_messages
    assert concurrency == DEV_CONCURRENCY
