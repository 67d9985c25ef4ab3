"""Every metric the dashboard (and the autoscaling rules) name exists in a real
/metrics scrape of the running binaries, with the labels the queries use;
only the names listed in deploy/grafana/planned-metrics.txt are exempt, and
those sit only in the dashboard's collapsed "planned" row."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import warnings

import pytest
import yaml

import support as s

DASHBOARD = s.DEPLOY / "grafana" / "weir.json"
PLANNED = s.DEPLOY / "grafana" / "planned-metrics.txt"
METRIC = re.compile(r"\b(weir_[a-z0-9_]+)\b")
# The raw /metrics pages of the scrapes above, for promtool.
RAW: dict[str, str] = {}
ALERTS = s.DEPLOY / "prometheus" / "weir-alerts.yaml"
ALERT_TESTS = s.DEPLOY / "prometheus" / "weir-alerts.test.yaml"
# Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = {"instance", "job", "pod", "namespace", "service", "container", "endpoint"}


def planned() -> set[str]:
    names = set()
    for line in PLANNED.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(d):
    """(panel, row title or None, row collapsed) for every panel, nested ones included."""
    out, row, collapsed = [], None, False
    for p in d["panels"]:
        if p["type"] == "row":
            row, collapsed = p["title"], p.get("collapsed", False)
            for inner in p.get("panels", []):
                out.append((inner, row, collapsed))
        else:
            out.append((p, row, collapsed))
    return out


def exprs(d) -> list[tuple[str, str, bool]]:
    """(PromQL, where, in the collapsed planned row) for every query."""
    out = []
    for p, row, collapsed in panels(d):
        for t in p.get("targets", []):
            out.append((t["expr"], f"panel {p['title']!r}", collapsed))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((q, f"variable {v['name']}", False))
    return out


# ---------------------------------------------------------------- live scrapes


class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def gateway_scrape(tmp_path_factory):
    """A real weir in front of a local upstream plus a dead pool (a bound port
    that does not listen), driven until every labelled family has series."""
    up = Upstream(("127.0.0.1", 0), Handler)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    up_addr = f"127.0.0.1:{up.server_address[1]}"
    dead_addr = f"127.0.0.1:{dead.getsockname()[1]}"
    cfg = tmp_path_factory.mktemp("scrape") / "weir.toml"
    cfg.write_text(f"""
[server]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
grace_period_seconds = 1
access_log = false

[[pools]]
name = "up"
backends = [{{ address = "{up_addr}" }}]
health_check = {{ kind = "tcp", interval_ms = 100 }}

[[pools]]
name = "dead"
backends = [{{ address = "{dead_addr}" }}]
health_check = {{ kind = "none" }}

[[filters]]
name = "words"
words = [{{ word = "x" }}]

[[tenants]]
name = "acme"
api_keys = ["sha256:{hashlib.sha256(b"scrape-key").hexdigest()}"]
requests_per_second = 1
burst = 1

[[routes]]
name = "secure"
prefix = "/secure"
auth = "required"
arms = [{{ name = "v1", pool = "up", weight = 1 }}]

[[pools]]
name = "dead-grpc"
protocol = "h2c"
backends = [{{ address = "{dead_addr}" }}]
health_check = {{ kind = "none" }}

[[routes]]
name = "grpc"
grpc = "grpc.health.v1.Health"
arms = [{{ name = "v1", pool = "dead-grpc", weight = 1 }}]

[[routes]]
name = "chat"
prefix = "/"
fallback = "v1"
filters = {{ request = ["words"] }}
rollback = {{ error_ratio = 0.5, min_requests = 1000 }}
arms = [
  {{ name = "v1", pool = "up", weight = 9 }},
  {{ name = "v2", pool = "up", weight = 1 }},
  {{ name = "dead", pool = "dead", weight = 0 }},
]
""")
    proc, proxy, admin = s.start_weir(cfg)
    wanted = {"weir_requests_total", "weir_request_duration_seconds_bucket", "weir_fallbacks_total",
              "weir_upstream_connect_failures_total", "weir_backend_healthy", "weir_config_generation",
              "weir_config_reloads_total", "weir_filter_matches_total", "weir_filter_duration_seconds_bucket",
              "weir_auth_failures_total", "weir_rate_limited_total", "weir_retries_total",
              "weir_rollbacks_total", "weir_breaker_state", "weir_grpc_responses_total"}
    try:
        def ready():
            s.http("POST", f"http://{proxy}/v1/completions", b'{"prompt":"x"}', {"content-type": "application/json"})
            # The dead arm: connect refused -> retried -> fallback to v1.
            s.http("GET", f"http://{proxy}/v1/models", headers={"x-ab-group": "dead"})
            # A gRPC call to a dead backend: UNAVAILABLE, in gRPC form.
            s.http("POST", f"http://{proxy}/grpc.health.v1.Health/Check", b"", {"content-type": "application/grpc"})
            # No credentials (401), then the tenant over its rate (429).
            s.http("GET", f"http://{proxy}/secure/x")
            for _ in range(2):
                s.http("GET", f"http://{proxy}/secure/x", headers={"authorization": "Bearer scrape-key"})
            got = s.scrape(f"http://{admin}/metrics")
            return got if wanted <= set(got) else None

        got = s.poll(ready, "gateway metrics with series", deadline_s=30, every_s=0.1)
        RAW["gateway"] = s.http("GET", f"http://{admin}/metrics")[1].decode()
        yield got
    finally:
        proc.stop()
        up.shutdown()
        up.server_close()
        dead.close()


@pytest.fixture(scope="module")
def engine_scrape(engines):
    addr = engines.start("weir-engine-v1")
    status, body = s.http("POST", f"http://{addr}/v1/completions",
                          json.dumps({"model": "tiny-lm", "prompt": "The Fox", "max_tokens": 8,
                                      "temperature": 0}).encode(), {"content-type": "application/json"})
    assert status == 200, body[:300]
    RAW["engine"] = s.http("GET", f"http://{addr}/metrics")[1].decode()
    return s.scrape(f"http://{addr}/metrics")


@pytest.fixture(scope="module")
def scraped(gateway_scrape, request) -> dict[str, set[str]]:
    """Gateway and (when its binary exists) engine series together."""
    merged = {k: set(v) for k, v in gateway_scrape.items()}
    try:
        engine = request.getfixturevalue("engine_scrape")
    except pytest.skip.Exception as e:
        warnings.warn(f"engine metrics not scraped: {e}")
        engine = None
    if engine is not None:
        for k, v in engine.items():
            merged.setdefault(k, set()).update(v)
    return merged


# ---------------------------------------------------------------- tests


def test_gateway_exports_what_the_readme_lists(gateway_scrape):
    readme = (s.ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(weir_[a-z_]+)`", readme, re.M))
    assert listed, "README.md metric table not found"
    missing = {m for m in listed if not any(n == m or n.startswith(m + "_") for n in gateway_scrape)}
    assert not missing, f"README lists metrics the gateway does not export: {missing}"


def test_engine_scrape_has_series(engine_scrape):
    for family in ("weir_engine_queue_depth", "weir_engine_time_to_first_token_seconds_bucket",
                   "weir_engine_output_tokens_total", "weir_engine_model_loads_total"):
        assert family in engine_scrape, family


def dashboard_metrics(engine: bool) -> list[tuple[str, str]]:
    """(where, name) for every metric in a non-planned query; engine names
    (weir_engine_*) or gateway names."""
    out = []
    for expr, where, in_planned_row in exprs(dashboard()):
        if not in_planned_row:
            out += [(where, n) for n in METRIC.findall(expr) if n.startswith("weir_engine_") == engine]
    return out


def check_exported(names: list[tuple[str, str]], scraped: dict[str, set[str]]):
    """Each name is a sample name in the live scrape (histograms as
    _bucket/_sum/_count)."""
    assert names
    unknown = [f"{where}: {name}" for where, name in names if name not in scraped]
    assert not unknown, "not in the /metrics scrape:\n" + "\n".join(unknown)
    # A planned metric that now exists should move to a regular row: say so
    # without failing the build of whoever landed it.
    landed = {n for n in scraped for p in planned() if n == p or n.startswith(p + "_")}
    if landed:
        warnings.warn(f"planned metrics now exported, move their panels: {sorted(landed)}")


def test_dashboard_gateway_metrics_are_exported(gateway_scrape):
    check_exported(dashboard_metrics(engine=False), gateway_scrape)


def test_dashboard_engine_metrics_are_exported(engine_scrape):
    check_exported(dashboard_metrics(engine=True), engine_scrape)


def test_dashboard_labels_exist(scraped):
    """Label matchers, `by (...)`/`ignoring (...)` groupings and label_values()
    use labels the metrics really carry."""
    problems = []
    for expr, where, in_planned_row in exprs(dashboard()):
        names = [n for n in METRIC.findall(expr) if n in scraped]
        if in_planned_row or not names:
            continue
        for name, matchers in re.findall(r"(weir_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                if label not in scraped.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label}")
        available = set().union(*(scraped[n] for n in names)) | TARGET_LABELS
        for group in re.findall(r"\b(?:by|ignoring|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                if label not in available:
                    problems.append(f"{where}: no metric in {names} has label {label}")
        for name, label in re.findall(r"label_values\((weir_\w+),\s*(\w+)\)", expr):
            if label not in scraped[name]:
                problems.append(f"{where}: {name} has no label {label}")
    assert not problems, "\n".join(problems)


def test_planned_metrics_are_only_in_the_collapsed_planned_row():
    d = dashboard()
    names = planned()
    rows = [p for p in d["panels"] if p["type"] == "row"]
    planned_rows = [r for r in rows if r.get("collapsed")]
    if not names:
        # Everything the dashboard shows is exported: no planned row.
        assert not planned_rows, "a collapsed row is left while nothing is planned"
        return
    assert len(planned_rows) == 1 and "planned" in planned_rows[0]["title"].lower()
    in_row = set()
    for expr, where, in_planned_row in exprs(d):
        found = set(METRIC.findall(expr))
        if in_planned_row:
            in_row |= found
            assert found <= names, f"{where}: {found - names} used in the planned row but not listed as planned"
        else:
            assert not (found & names), f"{where} uses planned metrics {found & names} outside the planned row"
    assert in_row == names, f"planned-metrics.txt and the planned row disagree: {in_row ^ names}"


def test_dashboard_shape():
    d = dashboard()
    ids = [p["id"] for p, _, _ in panels(d)] + [p["id"] for p in d["panels"] if p["type"] == "row"]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert d["uid"] and d["title"]
    for p, _, _ in panels(d):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
    wanted = ["per arm", "Error ratio", "P99", "Config generation", "queue depth", "first token", "tokens per second",
              "Breaker", "rollbacks", "Filter matches"]
    titles = " | ".join(p["title"] for p, _, _ in panels(d)).lower()
    for w in wanted:
        assert w.lower() in titles, f"no panel about {w}"


def test_autoscaling_metrics_come_from_real_series(rendered, with_components, scraped):
    """The prometheus-adapter rules serve the custom metrics the HPAs use
    (with components/hpa-custom-metrics), from series the binaries export."""
    rules = yaml.safe_load((s.K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]["custom"]
    served = {r["name"]["as"]: METRIC.findall(r["seriesQuery"])[0] for r in rules}
    engine_scraped = any(n.startswith("weir_engine_") for n in scraped)
    used = {m["pods"]["metric"]["name"] for docs in with_components.values()
            for hpa in s.find(docs, "HorizontalPodAutoscaler") for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert used == set(served), f"HPAs use {used}, the adapter serves {set(served)}"
    for overlay, docs in {**rendered, **with_components}.items():
        for hpa in s.find(docs, "HorizontalPodAutoscaler"):
            for m in hpa["spec"]["metrics"]:
                if m["type"] == "Pods":
                    name = m["pods"]["metric"]["name"]
                    assert name in served, f"{overlay} HPA {hpa['metadata']['name']}: no adapter rule for {name}"
    for source in served.values():
        if source.startswith("weir_engine_") and not engine_scraped:
            continue
        assert source in scraped, f"adapter rule reads {source}, which no binary exports"


# ---------------------------------------------------------------- promtool


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: scripts/deps.sh installs it (Debian package prometheus)")
    return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_live_gateway_scrape_passes_promtool(gateway_scrape):
    out = promtool("check", "metrics", stdin=RAW["gateway"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_live_engine_scrape_passes_promtool(engine_scrape):
    out = promtool("check", "metrics", stdin=RAW["engine"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_are_valid_and_their_unit_tests_pass():
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    out = promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])
              if a.get("exp_alerts")}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"


def test_alert_metrics_come_from_real_series(scraped):
    rules = yaml.safe_load(ALERTS.read_text())
    names = {m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"\b(weir_[a-z0-9_]+)\b", r["expr"])}
    missing = sorted(n for n in names if n not in scraped)
    assert not missing, f"alerts name metrics no binary exports: {missing}"
