"""The Helm chart deploy/helm/weir, linted and rendered by Helm's Go SDK (the
helm-python-sdk package bundles Helm v4's): it lints clean, every rendered
object passes strict Kubernetes schema validation with default, GPU, TLS,
external-etcd and monitoring values, values.schema.json refuses bad values,
and by default it installs what the Kustomize cpu overlay installs (the gpu
values what the gpu overlay installs), object by object, so that the two
packages do not drift. The gateway it renders runs against a local etcd
seeded by the Job it renders."""

from __future__ import annotations

import copy
import difflib
import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

import support as s
import test_manifests as tm

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (scripts/requirements.txt)")

CHART = s.HELM_CHART
GPU_VALUES = CHART / "values-gpu.yaml"
TLS = {"etcd": {"tls": {"enabled": True}}}
EXTERNAL_TLS = {"etcd": {"external": {
    "endpoints": ["https://etcd-a.example.internal:2379", "https://etcd-b.example.internal:2379"]},
    "tls": {"enabled": True, "existingSecret": "corp-etcd-client"}}}
MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
EVERYTHING = {**MONITORING, **TLS, "autoscaling": {"customMetrics": True}, "redis": {"enabled": True},
              "gateway": {"etcdCache": {"sharedVolume": True}}}


@pytest.fixture(scope="module")
def charts() -> dict[str, list[dict]]:
    return {
        "default": s.helm_render(),
        "gpu": s.helm_render(s.helm_values_file(GPU_VALUES)),
        "tls": s.helm_render(TLS),
        "external-tls": s.helm_render(EXTERNAL_TLS),
        "monitoring": s.helm_render(MONITORING),
        "everything": s.helm_render(EVERYTHING),
    }


# ---------------------------------------------------------------- lint and schema


@pytest.mark.parametrize("values", [None, "gpu", "everything", "external-tls"])
def test_helm_lint(values):
    vals = {"gpu": s.helm_values_file(GPU_VALUES), "everything": EVERYTHING,
            "external-tls": EXTERNAL_TLS}.get(values)
    report = helm.lint(str(CHART), vals, kube_version="v1.30.0")
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not errors, errors


def test_helm_lint_reports_a_broken_chart(tmp_path):
    """Control: lint does report errors (a template that does not parse)."""
    broken = tmp_path / "weir"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ if }}\n")
    report = helm.lint(str(broken))
    assert any(m["severity"] == 3 for m in report["messages"]) or report["errors"], report


def test_schema_accepts_the_shipped_values():
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.values)
        chart.validate_schema(s.helm_values_file(GPU_VALUES))
        for vals in (EVERYTHING, EXTERNAL_TLS):
            chart.validate_schema(vals)


@pytest.mark.parametrize("bad, where", [
    ({"engine": {"device": "tpu"}}, "/engine/device"),                                  # enum
    ({"gateway": {"replicas": "three"}}, "/gateway/replicas"),                          # type
    ({"engines": [{"version": "v1", "model": "tiny-lm"}]}, "/engines/0"),              # required
    ({"engines": [{"version": "V 1", "model": "m", "modelVersion": 1, "weight": 1,
                   "replicas": 1, "minReplicas": 1, "maxReplicas": 1}]}, "/engines/0/version"),  # pattern
    ({"etcd": {"external": {"endpoints": ["etcd:2379"]}}}, "/etcd/external/endpoints/0"),
    # the former plain-HTTP URLs for the engines: gone, so an old values file fails loudly
    ({"etcd": {"external": {"endpoints": ["https://e:2379"], "registerEndpoints": ["http://e:2378"]}}},
     "registerEndpoints"),
    ({"etcd": {"replicas": 2}}, "/etcd/replicas"),                                      # even member count
    ({"images": {"gateway": {"repository": "weir", "tag": "latest"}}}, "/images/gateway/tag"),
    ({"gatewy": {"replicas": 3}}, "gatewy"),                                            # a typo
    # null removes a default (as `--set gateway.resources.requests.memory=null` does)
    ({"gateway": {"resources": {"requests": {"memory": None}}}}, "/gateway/resources/requests"),
])
def test_schema_rejects_bad_values(bad, where):
    with helm.Chart.load(str(CHART)) as chart:
        # validate_schema coalesces `bad` with the chart's defaults, as an install does.
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(bad)
        assert where in str(err.value), str(err.value)
        # Rendering refuses them too (helm install would).
        with pytest.raises(helm.HelmError):
            chart.render(bad, name="weir", namespace="weir")


# ---------------------------------------------------------------- every object valid


@pytest.mark.parametrize("render", ["default", "gpu", "tls", "external-tls", "monitoring", "everything"])
@pytest.mark.parametrize("version", tm.K8S_VERSIONS)
def test_every_rendered_object_passes_schema_validation(charts, render, version):
    docs = [{**d, "metadata": {**d["metadata"], "namespace": "weir"}} for d in charts[render]]
    crds = tm.CRD_KINDS if render in ("monitoring", "everything") else set()
    problems = tm.schema_problems(docs, version, crds=crds)
    assert not problems, "\n".join(problems)


def test_every_container_is_bounded_and_locked_down(charts):
    """What test_manifests checks of the Kustomize renders, for every chart render."""
    for render, docs in charts.items():
        for w in s.pod_templates(docs):
            where = f"{render} {w['kind']}/{w['metadata']['name']}"
            spec = s.pod_spec(w)
            psc = spec["securityContext"]
            assert psc["runAsNonRoot"] is True and psc.get("runAsUser", 0) != 0, where
            assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in spec.get("initContainers", []) + spec["containers"]:
                r = c["resources"]
                assert r["requests"].get("cpu") and r["requests"].get("memory") and r["limits"].get("memory"), where
                sc = c["securityContext"]
                assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "capabilities": {"drop": ["ALL"]}}, f"{where} {c['name']}"
                assert ":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest"), where


def test_service_monitors_and_prometheus_rule(charts):
    """Off by default (the base needs no CRD); on, the ServiceMonitors are
    the Kustomize component's, and the PrometheusRule holds exactly the alert
    file's groups (through the chart's copy, files/weir-alerts.yaml)."""
    for render in ("default", "gpu", "tls"):
        kinds = {d["kind"] for d in charts[render]}
        assert not kinds & tm.CRD_KINDS, render
        assert not [d for d in charts[render] if "monitoring.coreos.com" in d["apiVersion"]]
    docs = charts["monitoring"]
    alerts = yaml.safe_load((s.DEPLOY / "prometheus" / "weir-alerts.yaml").read_text())
    (rule,) = s.find(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == alerts["groups"]
    kustomize = s.render_with("cpu", "prometheus-operator")
    for sm in s.find(docs, "ServiceMonitor"):
        theirs = s.one(kustomize, "ServiceMonitor", sm["metadata"]["name"])
        assert sm["spec"] == theirs["spec"], sm["metadata"]["name"]


def test_chart_files_are_copies_of_the_repository_files():
    """files/ holds copies (a packaged chart cannot reach outside itself):
    each must equal its original."""
    for copy_name, original in [
        ("weir-alerts.yaml", s.DEPLOY / "prometheus" / "weir-alerts.yaml"),
        ("models.pub", s.K8S / "base" / "engine" / "models.pub"),
        ("rotate-snapshots.sh", s.K8S / "components" / "etcd-maintenance" / "rotate-snapshots.sh"),
    ]:
        assert (CHART / "files" / copy_name).read_text() == original.read_text(), \
            f"deploy/helm/weir/files/{copy_name} differs from {original.relative_to(s.ROOT)}: cp {original.relative_to(s.ROOT)} deploy/helm/weir/files/"


# ---------------------------------------------------------------- equivalence with Kustomize


HASHED = re.compile(r"^(.*)-[a-z0-9]{10}$")


def normalized(docs: list[dict], kustomize: bool) -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, comparable across the two packages: generated
    ConfigMap names without their hash, no namespace, labels and annotations
    kept apart (compared as a subset), pod template metadata out of the spec,
    TOML config files parsed, Helm's hook annotations dropped."""
    renames = {}
    if kustomize:
        for d in docs:
            m = HASHED.match(d["metadata"]["name"])
            if d["kind"] == "ConfigMap" and m:
                renames[d["metadata"]["name"]] = m.group(1)
    text = yaml.safe_dump(docs)
    for old, new in renames.items():
        text = text.replace(old, new)
    out = {}
    for d in yaml.safe_load(text):
        by_name(d)
        if d["kind"] == "Namespace":
            continue
        md = d["metadata"]
        obj = {"apiVersion": d["apiVersion"], "labels": md.get("labels", {})}
        if d["kind"] == "ConfigMap":
            obj["data"] = {k: tomllib.loads(v) if k.endswith(".toml") else v for k, v in d["data"].items()}
        else:
            body = copy.deepcopy(d["spec"])
            if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
                tmpl = body["jobTemplate"]["spec"]["template"] if d["kind"] == "CronJob" else body["template"]
                obj["pod_labels"] = tmpl.pop("metadata")["labels"]
                if d["kind"] == "CronJob":
                    body["jobTemplate"].pop("metadata", None)
            obj["spec"] = body
        out[(d["kind"], md["name"])] = obj
    return out


def by_name(obj):
    """Sorts, in place, the lists whose order means nothing (env without
    $(VAR) references among its entries, volumes, mounts) by name: a
    Kustomize patch puts what it adds first."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("env", "volumes", "volumeMounts") and isinstance(value, list):
                value.sort(key=lambda e: e.get("name", "") + e.get("mountPath", ""))
            by_name(value)
    elif isinstance(obj, list):
        for value in obj:
            by_name(value)


def equivalence_problems(kustomize_docs: list[dict], helm_docs: list[dict]) -> list[str]:
    k, h = normalized(kustomize_docs, True), normalized(helm_docs, False)
    problems = []
    if set(k) != set(h):
        problems.append(f"only Kustomize: {sorted(set(k) - set(h))}; only Helm: {sorted(set(h) - set(k))}")
    for key in sorted(set(k) & set(h)):
        a, b = k[key], h[key]
        for part in ("apiVersion", "data", "spec"):
            if a.get(part) != b.get(part):
                problems.append(f"{key} {part} differs:\n{diff(a.get(part), b.get(part))}")
        for part in ("labels", "pod_labels"):
            missing = {kk: v for kk, v in a.get(part, {}).items() if b.get(part, {}).get(kk) != v}
            if missing:
                problems.append(f"{key} {part}: Helm lacks {missing}")
    return problems


def diff(a, b) -> str:
    return "\n".join(difflib.unified_diff(yaml.safe_dump(a).splitlines(), yaml.safe_dump(b).splitlines(),
                                          "kustomize", "helm", lineterm="", n=2))


def test_helm_default_is_the_cpu_overlay(rendered, charts):
    """Same objects (kinds and names), and for each the same spec: ports,
    probes, security contexts, resources, arguments, volumes, policies,
    autoscaling; the same configs (parsed). Helm's ConfigMap names carry no
    hash (a checksum annotation rolls the gateway instead) and it creates
    no Namespace."""
    problems = equivalence_problems(rendered["cpu"], charts["default"])
    assert not problems, "\n".join(problems)


def test_helm_gpu_values_are_the_gpu_overlay(rendered, charts):
    problems = equivalence_problems(rendered["gpu"], charts["gpu"])
    assert not problems, "\n".join(problems)


def test_helm_tls_is_the_etcd_tls_component(with_components, charts):
    """etcd.tls.enabled renders what the cpu overlay with etcd-tls does."""
    problems = equivalence_problems(with_components["cpu+etcd-tls"], charts["tls"])
    assert not problems, "\n".join(problems)


def test_equivalence_check_catches_drift(rendered, charts):
    """Control: a changed probe, a missing object, a changed config value."""
    for change in (
        lambda docs: s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")["readinessProbe"]
        .update(periodSeconds=3),
        lambda docs: docs.remove(s.one(docs, "CronJob", "weir-etcd-defrag")),
        lambda docs: s.one(docs, "ConfigMap", "weir-routes")["data"].update(
            {"routes.toml": s.one(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"].replace("90", "80")}),
    ):
        docs = copy.deepcopy(charts["default"])
        change(docs)
        assert equivalence_problems(rendered["cpu"], docs)


# ---------------------------------------------------------------- what the chart must hold


def test_gateway_policy_admin_service_and_token_secret(charts):
    """The gateway's NetworkPolicy admits the admin port only from Prometheus
    and weirctl; the admin port has its own Service; the token's digest is
    mounted from the existing Secret and read by weir.toml."""
    for render in ("default", "gpu", "tls", "everything"):
        docs = charts[render]
        assert not tm.gateway_policy_problems(docs), (render, tm.gateway_policy_problems(docs))
        assert [p["name"] for p in s.one(docs, "Service", "weir-gateway")["spec"]["ports"]] == ["proxy"]
        assert [p["name"] for p in s.one(docs, "Service", "weir-gateway-admin")["spec"]["ports"]] == ["admin"]
        dep = s.one(docs, "Deployment", "weir-gateway")
        c = s.container(dep, "weir")
        cfg = tomllib.loads(s.configmap_file(docs, dep, c, "/etc/weir/weir.toml"))
        path = re.fullmatch(r"\$\{file:(/[^}]+)\}", cfg["server"]["admin_token_sha256"]).group(1)
        assert s.secret_volume_files(dep, c)[path] == ("weir-admin-token", "token.sha256")
        assert not s.find(docs, "Secret"), "the chart must not ship a token"
    docs = s.helm_render({"gateway": {"adminToken": {"enabled": True, "existingSecret": "my-token"}}})
    dep = s.one(docs, "Deployment", "weir-gateway")
    assert ("my-token", "token.sha256") in s.secret_volume_files(dep, s.container(dep, "weir")).values()


def test_tls_reaches_every_etcd_client(charts):
    """etcd.tls.enabled: the chart's etcd serves https with client
    certificates on its one client port, and every client (gateway, engines,
    import Job, maintenance Jobs) uses https with the Secret's CA and client
    certificate; the etcd NetworkPolicy is the one without TLS (every client
    on the client port)."""
    for render in ("tls", "everything"):
        problems = tm.etcd_tls_problems(charts[render])
        assert not problems, (render, problems)
    assert s.one(charts["tls"], "NetworkPolicy", "weir-etcd") == s.one(charts["default"], "NetworkPolicy", "weir-etcd")
    assert tm.etcd_tls_problems(charts["default"]), "control: the default render has no TLS"


def test_external_etcd_with_tls(charts):
    """External etcd: no etcd of the chart's (nor its backups or policy); the
    gateway, the engines and the Job use the external https URLs with the CA
    and client certificate of the named Secret."""
    docs = charts["external-tls"]
    assert not s.find(docs, "StatefulSet") and not s.find(docs, "CronJob")
    assert not s.find(docs, "NetworkPolicy", "weir-etcd")
    problems = tm.etcd_tls_problems(docs, secret="corp-etcd-client")
    assert not problems, problems
    urls = ",".join(EXTERNAL_TLS["etcd"]["external"]["endpoints"])
    dep = s.one(docs, "Deployment", "weir-gateway")
    assert s.arg_value(s.container(dep, "weir")["args"], "--etcd") == urls
    (jc,) = s.pod_spec(s.one(docs, "Job", "weir-config-import"))["containers"]
    assert s.arg_value(jc["args"], "--etcd") == urls
    for v in ("v1", "v2"):
        ec = s.container(s.one(docs, "Deployment", f"weir-engine-{v}"), "engine")
        assert s.arg_value(ec["args"], "--register-etcd") == urls


def test_tls_without_a_client_certificate():
    """etcd.tls.clientCertificate false (an etcd that verifies no client
    certificate): every client gets the CA alone, and the chart's etcd does
    not ask for certificates."""
    docs = s.helm_render({"etcd": {"tls": {"enabled": True, "clientCertificate": False}}})
    etcd = s.container(s.one(docs, "StatefulSet", "weir-etcd"), "etcd")
    assert s.arg_value(etcd["args"], "--client-cert-auth") == "false"
    ca = tm.ETCD_TLS_FILES[0]
    for v in ("v1", "v2"):
        args = s.container(s.one(docs, "Deployment", f"weir-engine-{v}"), "engine")["args"]
        assert s.arg_value(args, "--register-etcd").startswith("https://")
        assert s.arg_value(args, "--register-cacert") == ca
        assert s.arg_value(args, "--register-cert") is None and s.arg_value(args, "--register-key") is None
    (jc,) = s.pod_spec(s.one(docs, "Job", "weir-config-import"))["containers"]
    assert s.arg_value(jc["args"], "--cacert") == ca and s.arg_value(jc["args"], "--cert") is None
    dep = s.one(docs, "Deployment", "weir-gateway")
    c = s.container(dep, "weir")
    cfg = tomllib.loads(s.configmap_file(docs, dep, c, s.arg_value(c["args"], "--config")))
    assert cfg["source"]["etcd"]["tls"] == {"ca": ca}


def test_engines_follow_the_values_list():
    """Each entry of `engines` is a Deployment, Service, HPA and PDB, a pool
    and an arm with its weight; per-engine overrides apply to that engine."""
    vals = {"engines": [
        {"version": "v1", "model": "tiny-lm", "modelVersion": 1, "weight": 70, "replicas": 2, "minReplicas": 2,
         "maxReplicas": 6},
        {"version": "canary", "model": "tiny-lm", "modelVersion": 2, "weight": 30, "replicas": 1,
         "minReplicas": 1, "maxReplicas": 2, "device": "cuda",
         "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}}},
    ]}
    docs = s.helm_render(vals)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert {(kind, "weir-engine-v1"), (kind, "weir-engine-canary")} <= names
        assert (kind, "weir-engine-v2") not in names
    routes = tomllib.loads(s.one(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])
    assert {p["name"] for p in routes["pools"]} == {"engine-v1", "engine-canary"}
    assert {a["name"]: a["weight"] for a in routes["routes"][0]["arms"]} == {"v1": 70, "canary": 30}
    canary = s.container(s.one(docs, "Deployment", "weir-engine-canary"), "engine")
    assert s.arg_value(canary["args"], "--device") == "cuda"
    assert s.arg_value(canary["args"], "--pool") == "engine-canary"
    assert canary["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert canary["resources"]["requests"]["cpu"] == "1", "the defaults stay under an override"
    v1 = s.container(s.one(docs, "Deployment", "weir-engine-v1"), "engine")
    assert s.arg_value(v1["args"], "--device") == "cpu" and "nvidia.com/gpu" not in v1["resources"]["limits"]


def test_redis_and_shared_cache(charts):
    """redis.enabled: a Redis only the gateway reaches, named in [limits];
    sharedVolume: the cache on a ReadWriteMany claim."""
    docs = charts["everything"]
    dep = s.one(docs, "Deployment", "weir-gateway")
    c = s.container(dep, "weir")
    cfg = tomllib.loads(s.configmap_file(docs, dep, c, "/etc/weir/weir.toml"))
    svc = s.one(docs, "Service", "weir-redis")
    assert cfg["limits"]["redis"] == f"redis://weir-redis:{svc['spec']['ports'][0]['port']}"
    pol = s.one(docs, "NetworkPolicy", "weir-redis")
    assert [p["podSelector"]["matchLabels"] for r in pol["spec"]["ingress"] for p in r["from"]] == \
        [{"app.kubernetes.io/name": "weir-gateway"}]
    vol = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}["etcd-cache"]
    pvc = s.one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    docs = s.helm_render({"redis": {"url": "rediss://redis.example.internal:6380"}})
    cfg = tomllib.loads(s.one(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"])
    assert cfg["limits"]["redis"] == "rediss://redis.example.internal:6380"
    assert not s.find(docs, "Deployment", "weir-redis")


# ---------------------------------------------------------------- against the binaries


@pytest.mark.parametrize("render", ["default", "everything", "external-tls"])
def test_rendered_gateway_config_passes_weir_check(charts, render, tmp_path):
    """`weir check` with the Deployment's own arguments and config (the TLS
    files stood in for by empty files: check does not open them)."""
    docs = charts[render]
    certs = tmp_path / "tls"
    certs.mkdir()
    for f in ("ca.crt", "tls.crt", "tls.key"):
        (certs / f).write_text("")
    args, _ = s.local_gateway_args(docs, tmp_path / "gw", "http://127.0.0.1:9", paths={"/etc/etcd/tls": certs})
    if render != "default":
        args = s.replace_arg(args, "--etcd", "https://127.0.0.1:9")
    out = subprocess.run([str(s.weir_bin()), "check", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_job_seeds_etcd_and_the_rendered_gateway_serves_it(charts, weirctl_help, tmp_path):
    """The chart's import Job and gateway, run with their own arguments
    against a local etcd: the gateway serves the route the chart generated
    from `engines` (weights 90/10)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd not installed (scripts/deps.sh installs etcd-server)")
    docs = charts["default"]
    (jc,) = s.pod_spec(s.one(docs, "Job", "weir-config-import"))["containers"]
    assert not s.check_args(jc["args"][1:], weirctl_help)
    etcd = s.Etcd()
    try:
        run = s.run_import_job(docs, tmp_path / "job", etcd.endpoint)
        assert run.returncode == 0 and "weir-import-config: imported" in run.stderr, run.stderr
        args, _cache = s.local_gateway_args(docs, tmp_path / "gw", etcd.endpoint)
        proc, _proxy, admin = s.start_weir_args(args)
        try:
            status, body = s.http("GET", f"http://{admin}/admin/routes", headers=s.ADMIN_HEADERS)
            assert status == 200, body[:200]
            (chat,) = [r for r in json.loads(body)["routes"] if r["name"] == "chat"]
            assert {a["name"]: a["weight"] for a in chat["arms"]} == {"v1": 90, "v2": 10}
        finally:
            proc.stop()
    finally:
        etcd.close()
