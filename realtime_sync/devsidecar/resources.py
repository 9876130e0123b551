"""The resources folder (``--resources-path``): the inbound policy daprd applies to deliveries.

daprd reads every resource in its resources path; the dev sidecar keeps only what changes how
it delivers to the app: the ``Resiliency`` resources scoped to its app id (or unscoped). From
them it takes the pub/sub component's ``inbound`` retry and timeout, or, when the component
has no target, the first default policy that exists (``DefaultPubsubComponentInboundRetryPolicy``,
``DefaultComponentInboundRetryPolicy``, ``DefaultComponentRetryPolicy``, ``DefaultRetryPolicy``;
likewise ``…TimeoutPolicy``), as dapr/dapr ``pkg/resiliency/resiliency.go``
``ComponentInboundPolicy`` / ``getDefaultPolicy`` do. No policy means no retry: daprd then
dead-letters a failed delivery at once (``pkg/runtime/subscription/subscription.go``).
Components and other kinds are listed in the log and otherwise ignored: the sidecar's
pub/sub and state store are its own, in memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import RetryPolicy

log = logging.getLogger(__name__)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_POLICY_LEVELS = ("PubsubComponentInbound", "ComponentInbound", "Component", "")


def go_duration_s(text: str) -> float:
    """A Go ``time.ParseDuration`` string (``"1m30s"``, ``"200ms"``) in seconds."""
    value = text.strip()
    if value == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (e.g. 500ms, 10s, 1m30s)")
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if not value:
        raise ValueError("empty duration")
    return total


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """What daprd does around each delivery to the app (one ``OnTopicEvent`` call)."""

    retry: RetryPolicy | None = None  # None: a failed delivery is not retried
    timeout_s: float | None = None  # None: no deadline on the call
    source: str = "no resiliency policy"


def _retry_policy(name: str, spec: Any) -> RetryPolicy:
    if not isinstance(spec, Mapping):
        raise ValueError(f"retry policy {name}: must be a mapping")
    defaults = RetryPolicy()

    def seconds(key: str, default: float) -> float:
        raw = spec.get(key)
        return default if raw is None else go_duration_s(str(raw))

    def number(key: str, default: float) -> float:
        raw = spec.get(key)
        return default if raw is None else float(raw)

    try:
        return RetryPolicy(
            policy=str(spec.get("policy", defaults.policy)),
            duration_s=seconds("duration", defaults.duration_s),
            initial_s=seconds("initialInterval", defaults.initial_s),
            max_interval_s=seconds("maxInterval", defaults.max_interval_s),
            multiplier=number("multiplier", defaults.multiplier),
            randomization=number("randomizationFactor", defaults.randomization),
            max_retries=int(spec.get("maxRetries", defaults.max_retries)),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"retry policy {name}: {exc}") from None


def _documents(folder: Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    if not folder.is_dir():
        raise ValueError(f"resources path {folder} is not a folder")
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path.name}: cannot read it as YAML: {exc}") from None
        for document in documents:
            if isinstance(document, dict):
                yield path, document


def load_inbound_policy(folders: Sequence[Path], *, app_id: str, pubsub_name: str) -> InboundPolicy:
    """The pub/sub component's inbound policy from the Resiliency resources in ``folders``.

    Raises ValueError naming the file or policy that cannot be used.
    """
    retries: dict[str, RetryPolicy] = {}
    timeouts: dict[str, float] = {}
    targets: dict[str, Mapping[str, Any]] = {}
    names: list[str] = []
    for folder in folders:
        for path, document in _documents(folder):
            kind = document.get("kind")
            name = (document.get("metadata") or {}).get("name", "?")
            if kind != "Resiliency":
                log.info(
                    "resources: %s %s (%s) is not used by the dev sidecar", kind, name, path.name
                )
                continue
            scopes = document.get("scopes") or []
            if scopes and app_id not in scopes:
                log.info("resources: Resiliency %s is scoped to %s, not %s", name, scopes, app_id)
                continue
            spec = document.get("spec") or {}
            policies = spec.get("policies") or {}
            for policy_name, policy in (policies.get("retries") or {}).items():
                retries[str(policy_name)] = _retry_policy(str(policy_name), policy)
            for policy_name, value in (policies.get("timeouts") or {}).items():
                try:
                    timeouts[str(policy_name)] = go_duration_s(str(value))
                except ValueError as exc:
                    raise ValueError(f"{path.name}: timeout {policy_name}: {exc}") from None
            components = (spec.get("targets") or {}).get("components") or {}
            targets.update({str(k): v for k, v in components.items() if isinstance(v, Mapping)})
            names.append(f"{name} ({path.name})")
    inbound = (targets.get(pubsub_name) or {}).get("inbound")
    if pubsub_name in targets:
        chosen = inbound if isinstance(inbound, Mapping) else {}
        retry_name, timeout_name = chosen.get("retry"), chosen.get("timeout")
        for kind, wanted, known in (
            ("retry", retry_name, retries),
            ("timeout", timeout_name, timeouts),
        ):
            if wanted is not None and wanted not in known:
                raise ValueError(f"component {pubsub_name} inbound: unknown {kind} policy {wanted}")
        where = f"component {pubsub_name} inbound"
    else:
        retry_name = next(
            (n for n in (f"Default{lvl}RetryPolicy" for lvl in _POLICY_LEVELS) if n in retries),
            None,
        )
        timeout_name = next(
            (n for n in (f"Default{lvl}TimeoutPolicy" for lvl in _POLICY_LEVELS) if n in timeouts),
            None,
        )
        where = "default policies"
    retry = retries.get(retry_name) if retry_name else None
    timeout = timeouts.get(timeout_name) if timeout_name else None
    if timeout is not None and (timeout <= 0 or not math.isfinite(timeout)):
        timeout = None
    if not names:
        return InboundPolicy()
    source = (
        f"{where} of {', '.join(names)}: "
        f"retry {retry_name or 'none'}, timeout {timeout_name or 'none'}"
    )
    return InboundPolicy(retry=retry, timeout_s=timeout, source=source)
