"""What an operator loads: the Prometheus rules, the scrape, the Grafana dashboard.

- deploy/prometheus/realtime-sync.rules.yml passes `promtool check rules`, and its unit tests
  (`promtool test rules`) make every alert fire on a series that should trigger it and stay
  silent on one just across the threshold; a changed threshold fails them.
- The PrometheusRule in the kustomization carries the same groups; the PodMonitor selects
  the Deployment's pods on ports that exist.
- /metrics of a service that has seen traffic passes `promtool check metrics`.
- A real Prometheus (Debian's package) scrapes a running service, loads the rules, and
  answers a `realtime_sync_*` query through its HTTP API; every dashboard query runs on it.
- deploy/grafana/realtime-sync.json is a well-formed dashboard whose queries name only
  metrics the service exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.common import free_port
from realtime_sync.metrics import Metrics
from tests.integration.conftest import ARTIFACTS, ServiceProcess, http_get
from tests.integration.harness import wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "realtime-sync.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "realtime-sync.rules.test.yml"
MONITORING = ROOT / "deploy" / "kubernetes" / "monitoring"
DASHBOARD = ROOT / "deploy" / "grafana" / "realtime-sync.json"
REQUIRED = os.environ.get("REALTIME_SYNC_REQUIRE_E2E") == "1"  # set by `make test`
SCRAPE_JOB = "realtime-sync"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if REQUIRED:
            pytest.fail(f"{name} is required (make test installs Debian's prometheus package)")
        pytest.skip(f"{name} missing (make test installs Debian's prometheus package)")
    return found


def promtool(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> tuple[int, str]:
    result = subprocess.run(
        [tool("promtool"), *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def load_yaml(path: Path) -> dict[str, Any]:
    value = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict), path
    return value


def alert_names() -> set[str]:
    return {r["alert"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}


# --- rules ------------------------------------------------------------------------------


def test_the_rules_file_passes_promtool_check_rules() -> None:
    code, output = promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert "SUCCESS: 18 rules found" in output, output


def test_every_alert_fires_and_stays_silent_in_the_promtool_unit_tests() -> None:
    code, output = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert code == 0, output
    assert "SUCCESS" in output, output
    # Every alert is tested both ways: it fires on some series of its test, and that test
    # has a series (another job or pod) that must not fire it (promtool fails on any extra).
    fired: dict[str, list[dict[str, str]]] = {}
    candidates: dict[str, list[dict[str, str]]] = {}
    for case in load_yaml(RULE_TESTS)["tests"]:
        series = [_labels(s["series"]) for s in case["input_series"]]
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            candidates.setdefault(name, []).extend(series)
            fired.setdefault(name, []).extend(a["exp_labels"] for a in check["exp_alerts"])
    assert set(fired) == alert_names()
    for name, expected in fired.items():
        assert expected, f"{name} never fires in the tests"
        silent = [s for s in candidates[name] if not any(_within(e, s) for e in expected if e)]
        assert silent, f"{name}: no series that must stay silent"


def _labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def _within(alert: dict[str, str], series: dict[str, str]) -> bool:
    """The alert was raised for this series: the labels they share agree."""
    shared = set(alert) & set(series)
    return bool(shared) and all(str(alert[k]) == series[k] for k in shared)


def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    text = RULES.read_text(encoding="utf-8")
    old = 'rate(realtime_sync_closes_total{code=~"4001|4002"}[5m])) > 5'
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, old[:-1] + "7"), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    code, output = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert code != 0
    assert "RealtimeSyncAuthFailures" in output, output


# --- Kubernetes objects -----------------------------------------------------------------

# The fields the Prometheus Operator accepts (prometheus-operator/prometheus-operator
# pkg/apis/monitoring/v1: prometheusrule_types.go PrometheusRuleSpec, RuleGroup, Rule;
# podmonitor_types.go PodMonitorSpec, PodMetricsEndpoint): a misspelt field is silently
# pruned by the API server, so it is caught here.
RULE_GROUP_FIELDS = {"name", "labels", "interval", "query_offset", "rules", "limit"}
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
POD_MONITOR_SPEC = {
    "jobLabel",
    "podTargetLabels",
    "podMetricsEndpoints",
    "selector",
    "namespaceSelector",
    "sampleLimit",
    "targetLimit",
    "attachMetadata",
    "scrapeClass",
}
POD_METRICS_ENDPOINT = {
    "port",
    "portNumber",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "filterRunning",
    "enableHttp2",
    "followRedirects",
}
# dapr/dapr pkg/injector/consts.go, SidecarMetricsPortName: the port the injector gives
# daprd's metrics endpoint.
DAPRD_METRICS_PORT = "dapr-metrics"


def test_the_prometheusrule_carries_the_rules_file_groups() -> None:
    rule = load_yaml(MONITORING / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP_FIELDS, group["name"]
        for entry in group["rules"]:
            assert set(entry) <= RULE_FIELDS, entry
            assert ("record" in entry) != ("alert" in entry), entry


def test_the_podmonitor_scrapes_the_deployments_pods() -> None:
    monitor = load_yaml(MONITORING / "podmonitor.yaml")
    [deployment] = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
        if d and d.get("kind") == "Deployment"
    ]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor"
    spec = monitor["spec"]
    assert set(spec) <= POD_MONITOR_SPEC, set(spec) - POD_MONITOR_SPEC
    pod = deployment["spec"]["template"]
    selected = spec["selector"]["matchLabels"].items()
    assert selected <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    annotations = pod["metadata"]["annotations"]
    assert annotations["dapr.io/enable-metrics"] == "true"
    endpoints = spec["podMetricsEndpoints"]
    for endpoint in endpoints:
        assert set(endpoint) <= POD_METRICS_ENDPOINT, endpoint
        assert endpoint["path"] == "/metrics"
    assert [e["port"] for e in endpoints] == ["ws", DAPRD_METRICS_PORT]
    assert "ws" in ports
    kustomization = load_yaml(ROOT / "deploy/kubernetes/kustomization.yaml")
    assert {"monitoring/podmonitor.yaml", "monitoring/prometheusrule.yaml"} <= set(
        kustomization["resources"]
    )


# --- a live service, a real Prometheus --------------------------------------------------


async def drive_traffic(s: ServiceProcess, user: str) -> None:
    """Connections, a routed event, a dropped one, a refused token: labelled series appear."""
    async with s.client(user) as client:
        s.publish({"type": "TASK_ADDED", "user_id": user, "task_id": 1, "id": f"{user}-e1"})
        assert (await client.updates(1))[0]["event_id"] == f"{user}-e1"
        s.publish({"type": "TASK_ADDED", "task_id": 2})  # no user_id: dropped
    async with connect(s.ws_url) as refused:
        await refused.send(orjson.dumps({"type": "auth", "token": "not-a-jwt"}).decode())
        with pytest.raises(ConnectionClosed):
            await refused.recv()
    assert refused.close_code == 4001
    wait_until(lambda: 'outcome="drop"' in s.metrics(), 5.0, message="no dropped event counted")


async def test_live_metrics_pass_promtool_check_metrics(stack: ServiceProcess) -> None:
    await drive_traffic(stack, "mon-lint")
    exposition = stack.metrics()
    assert 'outcome="success"' in exposition and 'code="4001"' in exposition
    code, output = promtool("check", "metrics", stdin=exposition)
    assert code == 0, output
    assert output.strip() == "", output


class PrometheusServer:
    """Debian's `prometheus` on a free port with its data in a temporary folder."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "prometheus.log"
        shutil.copy(RULES, folder / RULES.name)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES.name],
            "scrape_configs": [
                {"job_name": SCRAPE_JOB, "static_configs": [{"targets": [target]}]},
            ],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        wait_until(
            lambda: http_get(f"{self.base}/-/ready")[0] == 200,
            30.0,
            message=lambda: f"prometheus not ready:\n{self.log()}",
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (url, reply)
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture
def prometheus(stack: ServiceProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path, f"127.0.0.1:{stack.ws_port}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_prometheus_scrapes_the_service_and_loads_the_rules(
    stack: ServiceProcess, prometheus: PrometheusServer
) -> None:
    user = "mon-scrape"
    async with stack.client(user):
        # One connection held open: the scraped gauge must say so.
        expr = f'realtime_sync_connections{{job="{SCRAPE_JOB}"}}'

        def scraped_with_client() -> list[dict[str, Any]] | None:
            result = prometheus.query(expr)
            return result if result and float(result[0]["value"][1]) >= 1 else None

        result = wait_until(
            scraped_with_client, 30.0, message=lambda: f"no scrape:\n{prometheus.log()}"
        )
        [sample] = result
        assert sample["metric"]["instance"] == f"127.0.0.1:{stack.ws_port}"
        assert float(sample["value"][1]) == stack.metric("realtime_sync_connections")
    [target] = prometheus.api("targets")["activeTargets"]
    assert target["health"] == "up", target
    ARTIFACTS.mkdir(exist_ok=True)
    record = {"query": expr, "result": result}
    (ARTIFACTS / "prometheus-query.json").write_text(json.dumps(record, indent=2))
    print(f"prometheus query {expr!r} -> {json.dumps(result)}")

    # The rules load into a real server, and a recording rule evaluates on scraped data.
    groups = prometheus.api("rules")["groups"]
    assert {g["name"] for g in groups} == {g["name"] for g in load_yaml(RULES)["groups"]}
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    assert {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"} == (
        alert_names()
    )
    wait_until(
        lambda: prometheus.query(f'job:realtime_sync_connections:sum{{job="{SCRAPE_JOB}"}}'),
        30.0,
        message="the recording rule produced nothing",
    )

    # Every dashboard query is valid PromQL to a real server.
    for panel, expr_text in dashboard_queries():
        data = prometheus.api("query", query=grafana_to_promql(expr_text))
        assert data["resultType"] == "vector", (panel, expr_text)


# --- the Grafana dashboard ----------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    value = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel and template variable."""
    found = [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            values = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"])
            assert values, variable
            found.append((f"${variable['name']}", values[1]))
    return found


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as Prometheus durations; `$job` stays inside its regex."""
    return re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr).replace("$job", ".*")


def exported_metric_names(metrics: Metrics) -> set[str]:
    """The series names a Metrics registry exposes, with histograms' and counters' suffixes."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str | None]:
    """The metric names a PromQL expression selects (None for a selector without one)."""
    names: set[str | None] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return names


def unknown_metrics(exported: set[str]) -> list[str]:
    return [
        f"{title}: {name} in {expr}"
        for title, expr in dashboard_queries()
        for name in metric_names(expr)
        if name not in exported
    ]


def test_every_dashboard_query_names_only_exported_metrics() -> None:
    exported = exported_metric_names(Metrics())
    assert "realtime_sync_delivery_latency_seconds_bucket" in exported
    assert "realtime_sync_state_call_seconds_bucket" in exported  # labelled, no samples yet
    assert "realtime_sync_closes_total" in exported
    assert unknown_metrics(exported) == []
    used = {n for _, expr in dashboard_queries() for n in metric_names(expr)}
    # The list: connections, users, events in by outcome, frames and bytes out,
    # delivery latency, 4008/4029 closes, state call latency, acked-ahead and stale events.
    assert {
        "realtime_sync_connections",
        "realtime_sync_users",
        "realtime_sync_events_received_total",
        "realtime_sync_messages_sent_total",
        "realtime_sync_bytes_sent_total",
        "realtime_sync_delivery_latency_seconds_bucket",
        "realtime_sync_closes_total",
        "realtime_sync_state_call_seconds_bucket",
        "realtime_sync_events_acked_ahead_total",
        "realtime_sync_events_stale_total",
    } <= used
    assert any('code=~"4008|4029"' in expr for _, expr in dashboard_queries())


def test_the_metric_check_catches_a_name_the_service_does_not_export() -> None:
    exported = exported_metric_names(Metrics())
    assert metric_names("sum(rate(realtime_sync_events_total[$__rate_interval]))") - exported
    assert metric_names("realtime_sync_delivery_latency_seconds") - exported  # no suffix
    assert metric_names('{__name__=~"realtime_sync_.+"}') == {None}


GRID_COLUMNS = 24
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row"}


def test_the_dashboard_is_a_valid_model() -> None:
    model = dashboard()
    assert {"uid", "title", "panels", "schemaVersion", "templating", "time"} <= set(model)
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", model["uid"])
    assert "id" not in model, "an exported dashboard has no id: Grafana assigns one"
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert all(isinstance(v, int) and v >= 0 for v in grid.values()), grid
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
            # Parses as PromQL once Grafana's variables are filled in.
            metric_names(target["expr"])
