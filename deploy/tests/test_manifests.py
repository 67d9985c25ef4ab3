"""The Kustomize overlays and components render, every object passes
Kubernetes schema validation, and the objects hold together (selectors,
probes, budgets, policies, the admin token, GPU settings, the optional
components)."""

from __future__ import annotations

import copy
import re
import tomllib

import kubernetes_validate as kv
import pytest
import yaml

import support as s

# Oldest Kubernetes the manifests target (preStop `sleep` is on by default
# from 1.30) and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kv.latest_version())
# Custom resources (components/prometheus-operator only): no bundled schema;
# their fields are checked below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def schema_problems(docs: list[dict], version: str, crds: set[str] = CRD_KINDS) -> list[str]:
    problems = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError:
            if doc["kind"] not in crds:
                problems.append(f"{where}: no schema for {doc['apiVersion']} in {version}")
        except kv.ValidationError as e:
            problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    return problems


@pytest.mark.parametrize("overlay", s.OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_schema_validation(rendered, overlay, version):
    """The overlays as they are need no CRD: every object has a schema."""
    problems = schema_problems(rendered[overlay], version, crds=set())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("render", [f"{o}+all" for o in s.OVERLAYS] + [f"cpu+{c}" for c in s.OPTIONAL_COMPONENTS])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_component_renders_and_validates(with_components, render, version):
    problems = schema_problems(with_components[render], version)
    assert not problems, "\n".join(problems)
    assert {d["metadata"].get("namespace") for d in with_components[render] if d["kind"] != "Namespace"} == {"weir"}


def test_overlays_include_only_components_that_need_nothing_more():
    """Both overlays include etcd-maintenance and none of the optional
    components (each needs a CRD, an API or a Secret the cluster may not have)."""
    for overlay in s.OVERLAYS:
        k = yaml.safe_load((s.K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert [c.rsplit("/", 1)[1] for c in k.get("components", [])] == list(s.OVERLAY_COMPONENTS), overlay
    present = {p.name for p in (s.K8S / "components").iterdir() if (p / "kustomization.yaml").is_file()}
    assert present == set(s.OVERLAY_COMPONENTS) | set(s.OPTIONAL_COMPONENTS), present


def test_validator_rejects_broken_objects(rendered):
    """Control: the strict validation above does catch mistakes."""
    dep = copy.deepcopy(s.one(rendered["cpu"], "Deployment", "weir-gateway"))
    s.pod_spec(dep)["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = copy.deepcopy(s.one(rendered["cpu"], "Deployment", "weir-gateway"))
    dep["spec"]["replicas"] = "three"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)


def test_expected_objects_exist(rendered):
    for overlay, docs in rendered.items():
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for want in [
            ("Deployment", "weir-gateway"), ("Service", "weir-gateway"),
            ("HorizontalPodAutoscaler", "weir-gateway"), ("PodDisruptionBudget", "weir-gateway"),
            ("Deployment", "weir-engine-v1"), ("Deployment", "weir-engine-v2"),
            ("Service", "weir-engine-v1"), ("Service", "weir-engine-v2"),
            ("HorizontalPodAutoscaler", "weir-engine-v1"), ("HorizontalPodAutoscaler", "weir-engine-v2"),
            ("StatefulSet", "weir-etcd"), ("Service", "weir-etcd"),
            ("Service", "weir-gateway-admin"),
            ("NetworkPolicy", "weir-gateway"), ("NetworkPolicy", "weir-engine"), ("NetworkPolicy", "weir-etcd"),
            ("Job", "weir-config-import"),
            ("CronJob", "weir-etcd-backup"), ("CronJob", "weir-etcd-defrag"),
            ("PersistentVolumeClaim", "weir-etcd-backup"),
        ]:
            assert want in kinds, f"{overlay}: {want} missing"
        s.by_prefix(docs, "ConfigMap", "weir-gateway-config")
        s.by_prefix(docs, "ConfigMap", "weir-routes")
        s.by_prefix(docs, "ConfigMap", "weir-model-keys")
        s.by_prefix(docs, "ConfigMap", "weir-etcd-backup-scripts")
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"weir"}
        # The admin token is each installation's own: never shipped.
        assert not s.find(docs, "Secret"), f"{overlay}: a Secret is shipped"


def gateway_config(docs) -> dict:
    return tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"])


def test_gateway_deployment(rendered):
    docs = rendered["cpu"]
    dep = s.one(docs, "Deployment", "weir-gateway")
    spec = s.pod_spec(dep)
    c = s.container(dep, "weir")
    assert dep["spec"]["replicas"] == 3
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Anti-affinity on the node, against its own pods.
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and s.labels_match(t["podAffinityTerm"]["labelSelector"]["matchLabels"],
                                  dep["spec"]["template"]["metadata"]["labels"]) for t in terms)
    # Shutdown budget: preStop, then Pingora's grace period twice (it waits
    # grace_period_seconds, then gives runtimes graceful_shutdown_timeout,
    # which weir sets to the same value), then a little margin before SIGKILL.
    grace = gateway_config(docs)["server"]["grace_period_seconds"]
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    tgps = spec["terminationGracePeriodSeconds"]
    assert pre_stop + 2 * grace <= tgps <= pre_stop + 2 * grace + 15, (pre_stop, grace, tgps)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gateway_runs_from_etcd_with_a_writable_cache(rendered):
    """--etcd, and --etcd-cache in a writable pod volume (the root file
    system is read-only); the bootstrap file holds nothing but [server]; the
    startup probe does not wait for a config (etcd may be empty or away)."""
    for overlay, docs in rendered.items():
        dep = s.one(docs, "Deployment", "weir-gateway")
        c = s.container(dep, "weir")
        assert s.arg_value(c["args"], "--etcd"), f"{overlay}: the gateway does not run from etcd"
        cache = s.arg_value(c["args"], "--etcd-cache")
        assert cache, f"{overlay}: no --etcd-cache"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        cache_dir = cache.rsplit("/", 1)[0]
        assert cache_dir in mounts, f"{cache} is not in a volume"
        assert not mounts[cache_dir].get("readOnly"), f"{cache_dir} is mounted read-only"
        vol = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}[mounts[cache_dir]["name"]]
        assert "emptyDir" in vol or "persistentVolumeClaim" in vol or "ephemeral" in vol, vol
        cfg = gateway_config(docs)
        assert set(cfg) == {"server"}, f"bootstrap config has {sorted(set(cfg) - {'server'})}"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def routes_config(docs) -> dict:
    return tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])


def test_config_import_job(rendered):
    for overlay, docs in rendered.items():
        job = s.one(docs, "Job", "weir-config-import")
        spec = s.pod_spec(job)
        assert spec["restartPolicy"] in ("Never", "OnFailure")
        assert job["spec"]["backoffLimit"] >= 1
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
        assert job["spec"]["activeDeadlineSeconds"] > 0
        (c,) = spec["containers"]
        assert c["image"].split(":")[0] == "weirctl"
        # weir-import-config FILE [WEIRCTL-FLAG...]: FILE is the routes ConfigMap's.
        path = c["args"][0]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vol = {v["name"]: v for v in spec["volumes"]}[mounts[path.rsplit("/", 1)[0]]]
        cm = s.one(docs, "ConfigMap", vol["configMap"]["name"])
        assert path.rsplit("/", 1)[1] in cm["data"]
        assert routes_config(docs)["routes"], f"{overlay}: nothing to import"
        # The etcd NetworkPolicy admits it by this label.
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "weirctl"


def test_every_container_is_bounded_and_locked_down(rendered, with_components):
    """Resources on every container; the restricted Pod Security profile."""
    for overlay, docs in {**rendered, **with_components}.items():
        for w in find_pod_templates(docs):
            where = f"{overlay} {w['kind']}/{w['metadata']['name']}"
            spec = s.pod_spec(w)
            psc = spec["securityContext"]
            assert psc["runAsNonRoot"] is True, where
            assert psc.get("runAsUser", 0) != 0, where
            assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in spec.get("initContainers", []) + spec["containers"]:
                r = c.get("resources", {})
                assert r.get("requests", {}).get("cpu") and r.get("requests", {}).get("memory"), f"{where} {c['name']}"
                assert r.get("limits", {}).get("memory"), f"{where} {c['name']}: no memory limit"
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, f"{where} {c['name']}"
                assert sc["readOnlyRootFilesystem"] is True, f"{where} {c['name']}"
                assert sc["capabilities"]["drop"] == ["ALL"], f"{where} {c['name']}"
                image = c["image"]
                assert ":" in image.split("/")[-1] or "@sha256:" in image, f"{where}: {image} has no tag"
                assert not image.endswith(":latest"), f"{where}: {image}"
        ns = s.one(docs, "Namespace", "weir")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for w in find_pod_templates(docs):
            for v in s.pod_spec(w).get("volumes", []):
                kinds = set(v) - {"name"}
                assert kinds <= {"configMap", "secret", "projected", "emptyDir", "persistentVolumeClaim",
                                 "downwardAPI", "ephemeral", "csi"}, f"{overlay} {w['metadata']['name']}: {v}"


def find_workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def find_pod_templates(docs):
    return s.pod_templates(docs)


def test_selectors_hpas_and_budgets_point_at_real_pods(rendered):
    for overlay, docs in rendered.items():
        workloads = find_workloads(docs)
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
        for w in workloads:
            assert s.labels_match(w["spec"]["selector"]["matchLabels"],
                                  w["spec"]["template"]["metadata"]["labels"]), w["metadata"]["name"]
        for svc in s.find(docs, "Service"):
            sel = svc["spec"]["selector"]
            matched = [w for w in workloads if s.labels_match(sel, w["spec"]["template"]["metadata"]["labels"])]
            assert len(matched) == 1, f"{overlay} Service/{svc['metadata']['name']} selects {len(matched)} workloads"
            for p in svc["spec"]["ports"]:
                s.named_port(s.pod_spec(matched[0])["containers"][0], p["targetPort"])
        for pdb in s.find(docs, "PodDisruptionBudget"):
            assert any(s.labels_match(pdb["spec"]["selector"]["matchLabels"], p) for p in pods), pdb["metadata"]["name"]
        for hpa in s.find(docs, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            target = s.one(docs, ref["kind"], ref["name"])
            assert hpa["spec"]["minReplicas"] <= target["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
            for m in hpa["spec"]["metrics"]:
                if m["type"] == "Resource":
                    res = m["resource"]["name"]
                    for c in s.pod_spec(target)["containers"]:
                        assert c["resources"]["requests"].get(res), f"HPA on {res} needs {res} requests"


def hpa_metrics(hpa: dict) -> set[tuple[str, str]]:
    return {(m["type"], (m.get("resource") or m.get("pods", {}).get("metric", {})).get("name"))
            for m in hpa["spec"]["metrics"]}


def test_autoscaling_needs_only_metrics_server_by_default(rendered):
    """Every HPA of both overlays scales on CPU alone (metrics-server), so
    nothing is unavailable without prometheus-adapter."""
    for overlay, docs in rendered.items():
        hpas = s.find(docs, "HorizontalPodAutoscaler")
        assert {h["metadata"]["name"] for h in hpas} == {"weir-gateway", "weir-engine-v1", "weir-engine-v2"}
        for hpa in hpas:
            assert hpa_metrics(hpa) == {("Resource", "cpu")}, f"{overlay} {hpa['metadata']['name']}"


def test_custom_metrics_component(with_components):
    """hpa-custom-metrics adds request rate (gateway) and queue depth
    (engines), keeping CPU; each is a rule of prometheus-adapter/rules.yaml."""
    rules = yaml.safe_load((s.K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]["custom"]
    served = {r["name"]["as"] for r in rules}
    for render in ("cpu+hpa-custom-metrics", "gpu+all"):
        docs = with_components[render]
        want = {"weir-gateway": "weir_requests_per_second",
                "weir-engine-v1": "weir_engine_queue_depth", "weir-engine-v2": "weir_engine_queue_depth"}
        for name, metric in want.items():
            hpa = s.one(docs, "HorizontalPodAutoscaler", name)
            assert hpa_metrics(hpa) == {("Resource", "cpu"), ("Pods", metric)}, (render, name)
            assert metric in served


def test_engine_deployments_differ_only_by_version(rendered):
    """v1 and v2 are one template: anything else that differs is drift."""
    docs = rendered["cpu"]
    v1 = s.one(docs, "Deployment", "weir-engine-v1")
    v2 = s.one(docs, "Deployment", "weir-engine-v2")
    norm = yaml_text(v2).replace("weir-engine-v2", "weir-engine-v1").replace("tiny-lm:2", "tiny-lm:1") \
        .replace("tiny-lm/versions/2/", "tiny-lm/versions/1/").replace("repo/tiny-lm/2 ", "repo/tiny-lm/1 ") \
        .replace("tiny-lm version 2", "tiny-lm version 1").replace("--pool=engine-v2", "--pool=engine-v1")
    a, b = yaml_obj(yaml_text(v1)), yaml_obj(norm)
    a["spec"].pop("replicas")
    b["spec"].pop("replicas")
    assert a == b


def yaml_text(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=True)


def yaml_obj(text: str):
    return yaml.safe_load(text)


def test_engine_readiness_is_model_ready(rendered):
    for overlay, docs in rendered.items():
        for v in ("1", "2"):
            dep = s.one(docs, "Deployment", f"weir-engine-v{v}")
            c = s.container(dep, "engine")
            assert s.arg_value(c["args"], "--model") == f"tiny-lm:{v}"
            assert c["readinessProbe"]["httpGet"]["path"] == f"/v2/models/tiny-lm/versions/{v}/ready"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get(s.arg_value(c["args"], "--models")) == "models", "--models must be the model volume"
            key = s.arg_value(c["args"], "--public-key")
            key_dir = key.rsplit("/", 1)[0]
            vol = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}[mounts[key_dir]]
            assert "configMap" in vol, "the public key must come from its own ConfigMap, apart from the models"


def test_model_key_configmap_is_the_shipped_key():
    shipped = (s.ROOT / "backend-engine/models/keys/models.pub").read_text()
    assert (s.K8S / "base/engine/models.pub").read_text() == shipped, \
        "deploy/k8s/base/engine/models.pub differs from backend-engine/models/keys/models.pub (key rotation: deploy/README.md)"


def test_gpu_overlay(rendered):
    for v in ("1", "2"):
        gpu = s.one(rendered["gpu"], "Deployment", f"weir-engine-v{v}")
        cpu = s.one(rendered["cpu"], "Deployment", f"weir-engine-v{v}")
        c = s.container(gpu, "engine")
        assert s.arg_value(c["args"], "--device") == "cuda"
        assert s.arg_value(s.container(cpu, "engine")["args"], "--device") == "cpu"
        for part in ("requests", "limits"):
            assert c["resources"][part]["nvidia.com/gpu"] == 1
            assert "nvidia.com/gpu" not in s.container(cpu, "engine")["resources"][part]
        spec = s.pod_spec(gpu)
        assert spec["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        assert c["image"].split(":")[0] == "weir-engine-gpu"
        assert all(i["image"].split(":")[0] == "weir-engine-gpu" for i in spec["initContainers"])
        hpa = s.one(rendered["gpu"], "HorizontalPodAutoscaler", f"weir-engine-v{v}")
        assert hpa_metrics(hpa) == {("Resource", "cpu")}
        for part in ("requests", "limits"):
            assert c["resources"][part]["cpu"], "the CPU HPA needs a CPU request"
    # The gateway, etcd, the import Job and the maintenance are the same in both overlays.
    for kind, name in [("Deployment", "weir-gateway"), ("StatefulSet", "weir-etcd"), ("Job", "weir-config-import"),
                       ("CronJob", "weir-etcd-backup"), ("CronJob", "weir-etcd-defrag")]:
        assert s.one(rendered["gpu"], kind, name) == s.one(rendered["cpu"], kind, name)


def test_etcd_statefulset(rendered):
    docs = rendered["cpu"]
    sts = s.one(docs, "StatefulSet", "weir-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = s.one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    args = s.container(sts, "etcd")["args"]
    cluster = s.arg_value(args, "--initial-cluster").split(",")
    assert [m.split("=")[0] for m in cluster] == [f"weir-etcd-{i}" for i in range(3)]
    for m in cluster:
        name, url = m.split("=", 1)
        assert url == f"http://{name}.{sts['spec']['serviceName']}.$(POD_NAMESPACE).svc:2380"


def test_network_policies_admit_only_the_gateway(rendered):
    """Engines: ingress only from the gateway (and Prometheus on the metrics
    port). etcd: from its clients (the gateway, the engines, weirctl), its
    peers and Prometheus on its metrics port."""
    docs = rendered["cpu"]
    gateway_labels = s.one(docs, "Deployment", "weir-gateway")["spec"]["template"]["metadata"]["labels"]
    for policy_name, workloads, allowed_names in [
        ("weir-engine", ["weir-engine-v1", "weir-engine-v2"], {"weir-gateway"}),
        ("weir-etcd", ["weir-etcd"], {"weir-gateway", "weir-engine", "weirctl", "weir-etcd", "weir-etcd-maintenance"}),
    ]:
        pol = s.one(docs, "NetworkPolicy", policy_name)
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        for w in workloads:
            kind = "StatefulSet" if w == "weir-etcd" else "Deployment"
            labels = s.one(docs, kind, w)["spec"]["template"]["metadata"]["labels"]
            assert s.labels_match(pol["spec"]["podSelector"]["matchLabels"], labels), f"{policy_name} misses {w}"
        seen = set()
        for rule in pol["spec"]["ingress"]:
            assert rule.get("from"), f"{policy_name}: a rule without `from` admits everyone"
            for peer in rule["from"]:
                assert "ipBlock" not in peer
                name = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                if "namespaceSelector" in peer:
                    # Only Prometheus from another namespace, and only on metrics ports.
                    assert name == "prometheus"
                    assert {p["port"] for p in rule["ports"]} <= {"http", "metrics"}
                else:
                    assert name in allowed_names, f"{policy_name} admits {name}"
                    seen.add(name)
        assert "weir-gateway" in seen
        assert s.labels_match({"app.kubernetes.io/name": "weir-gateway"}, gateway_labels)


def test_service_monitors(with_components):
    """ServiceMonitor has no bundled schema: check its fields here. The
    gateway's scrapes its admin Service with the admin token from the Secret;
    the engines' their HTTP port without one."""
    for render in ("cpu+prometheus-operator", "cpu+all", "gpu+all"):
        docs = with_components[render]
        sms = {sm["metadata"]["name"]: sm for sm in s.find(docs, "ServiceMonitor")}
        assert set(sms) == {"weir-gateway", "weir-engine"}, render
        for sm in sms.values():
            where = f"{render} ServiceMonitor/{sm['metadata']['name']}"
            assert sm["apiVersion"] == "monitoring.coreos.com/v1", where
            assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}, where
            assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, where
            sel = sm["spec"]["selector"]["matchLabels"]
            services = [svc for svc in s.find(docs, "Service") if s.labels_match(sel, svc["metadata"].get("labels", {}))]
            assert services, f"{where} selects no Service"
            assert sm["spec"]["endpoints"], where
            for ep in sm["spec"]["endpoints"]:
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "authorization"}, where
                assert ep["path"] == "/metrics", where
                assert ep["interval"].endswith("s") and int(ep["interval"][:-1]) > 0, where
                for svc in services:
                    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}, \
                        f"{where}: Service {svc['metadata']['name']} has no port {ep['port']}"
        gw = sms["weir-gateway"]["spec"]
        (ep,) = gw["endpoints"]
        assert ep["port"] == "admin"
        assert ep["authorization"] == {"type": "Bearer", "credentials": {"name": "weir-admin-token", "key": "token"}}
        selected = [svc["metadata"]["name"] for svc in s.find(docs, "Service")
                    if s.labels_match(gw["selector"]["matchLabels"], svc["metadata"].get("labels", {}))]
        assert selected == ["weir-gateway-admin"], selected
        (ep,) = sms["weir-engine"]["spec"]["endpoints"]
        assert ep["port"] == "http" and "authorization" not in ep


def test_prometheus_rule_is_the_alert_file(with_components):
    """components/prometheus-operator's PrometheusRule holds exactly the
    groups of deploy/prometheus/weir-alerts.yaml."""
    alerts = yaml.safe_load((s.DEPLOY / "prometheus" / "weir-alerts.yaml").read_text())
    rule = s.one(with_components["cpu+prometheus-operator"], "PrometheusRule", "weir-alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == alerts["groups"], \
        "PrometheusRule weir-alerts differs from deploy/prometheus/weir-alerts.yaml: copy the file's groups " \
        "into deploy/k8s/components/prometheus-operator/prometheusrule.yaml"
    # Control: one changed threshold is a difference.
    changed = copy.deepcopy(alerts["groups"])
    changed[0]["rules"][0]["for"] = "6m"
    assert changed != rule["spec"]["groups"]


def admitted_ports(policy: dict, labels: dict) -> set:
    """Ports (names or numbers) `policy` lets pods with `labels` from this
    namespace reach."""
    ports = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer or "ipBlock" in peer:
                continue
            if s.labels_match(peer["podSelector"].get("matchLabels", {}), labels):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def test_every_etcd_client_may_reach_etcd(rendered, with_components):
    """Every pod that names an etcd URL (the gateway, the engines that
    register, the import Job, the maintenance CronJobs) is admitted to the
    etcd port it names; of them, only the gateway reaches the engines."""
    for overlay, docs in {**rendered, **with_components}.items():
        etcd_policy = s.one(docs, "NetworkPolicy", "weir-etcd")
        engine_policy = s.one(docs, "NetworkPolicy", "weir-engine")
        etcd = s.container(s.one(docs, "StatefulSet", "weir-etcd"), "etcd")
        ports = {p["containerPort"]: p["name"] for p in etcd["ports"]}
        clients = {}
        for place, _flag, urls, _prefix in s.etcd_references(docs):
            kind, name = place.split()[0].split("/")
            for url in urls:
                clients.setdefault((kind, name), set()).add(ports[int(url.rsplit(":", 1)[1])])
        names = {n for _, n in clients}
        assert {"weir-gateway", "weir-engine-v1", "weir-engine-v2", "weir-config-import",
                "weir-etcd-backup", "weir-etcd-defrag"} <= names, names
        for (kind, name), needed in clients.items():
            labels = s.pod_labels(s.one(docs, kind, name))
            admitted = admitted_ports(etcd_policy, labels)
            assert needed <= admitted, f"{overlay}: NetworkPolicy weir-etcd keeps {kind}/{name} from {needed - admitted}"
            reaches_engines = bool(admitted_ports(engine_policy, labels))
            assert reaches_engines == (name == "weir-gateway"), \
                f"{overlay}: {name} reaches the engines: {reaches_engines}"


def test_network_policy_check_catches_a_missing_client(rendered):
    """Control: without the engines' peer the etcd policy keeps them out."""
    pol = copy.deepcopy(s.one(rendered["cpu"], "NetworkPolicy", "weir-etcd"))
    labels = s.one(rendered["cpu"], "Deployment", "weir-engine-v1")["spec"]["template"]["metadata"]["labels"]
    assert "client" in admitted_ports(pol, labels)
    for rule in pol["spec"]["ingress"]:
        rule["from"] = [p for p in rule["from"]
                        if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "weir-engine"]
    assert "client" not in admitted_ports(pol, labels)


# ---------------------------------------------------------------- the gateway's admin port


def peer_names(rule: dict) -> set[str]:
    """`namespace/name` of each peer of an ingress rule (`*` when it has none)."""
    if "from" not in rule:
        return {"*"}
    out = set()
    for peer in rule["from"]:
        assert "ipBlock" not in peer, peer
        ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", "")
        out.add(f"{ns}/{peer['podSelector']['matchLabels']['app.kubernetes.io/name']}")
    return out


def gateway_policy_problems(docs: list[dict]) -> list[str]:
    """The gateway's NetworkPolicy selects its pods, opens the proxy port to
    everyone and the admin port only to Prometheus (monitoring) and weirctl
    pods; nothing else."""
    pol = s.one(docs, "NetworkPolicy", "weir-gateway")
    dep = s.one(docs, "Deployment", "weir-gateway")
    problems = []
    if not s.labels_match(pol["spec"]["podSelector"]["matchLabels"], s.pod_labels(dep)):
        problems.append("does not select the gateway pods")
    if pol["spec"]["policyTypes"] != ["Ingress"]:
        problems.append(f"policyTypes {pol['spec']['policyTypes']}")
    by_port: dict[str, set[str]] = {}
    for rule in pol["spec"]["ingress"]:
        for port in rule.get("ports") or [{"port": "*"}]:
            by_port.setdefault(port["port"], set()).update(peer_names(rule))
    want = {"proxy": {"*"}, "admin": {"monitoring/prometheus", "/weirctl"}}
    if by_port != want:
        problems.append(f"admits {by_port}, not {want}")
    names = {p["name"] for p in s.container(dep, "weir")["ports"]}
    if not set(by_port) <= names | {"*"}:
        problems.append(f"names ports {set(by_port) - names} the gateway does not have")
    return problems


def test_gateway_network_policy(rendered, with_components):
    for overlay, docs in {**rendered, **with_components}.items():
        assert not gateway_policy_problems(docs), f"{overlay}: {gateway_policy_problems(docs)}"


def test_gateway_network_policy_check_catches_mistakes(rendered):
    """Control: the admin port opened to everyone, or to one more peer, is reported."""
    docs = rendered["cpu"]
    for change in (
        lambda pol: pol["spec"]["ingress"][1].pop("from"),
        lambda pol: pol["spec"]["ingress"][1]["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "weir-engine"}}}),
        lambda pol: pol["spec"]["ingress"][0]["ports"].append({"port": "admin", "protocol": "TCP"}),
    ):
        bad = copy.deepcopy(docs)
        change(s.one(bad, "NetworkPolicy", "weir-gateway"))
        assert gateway_policy_problems(bad)


def test_admin_port_has_its_own_service_and_the_token_is_mounted(rendered):
    """weir-gateway serves the proxy alone; weir-gateway-admin the admin port.
    weir.toml's admin_token_sha256 is a ${file:} of the Secret
    weir-admin-token's key token.sha256, mounted read-only and required (the
    pod does not start without it); the probes are on paths the token does
    not guard."""
    for overlay, docs in rendered.items():
        assert [p["name"] for p in s.one(docs, "Service", "weir-gateway")["spec"]["ports"]] == ["proxy"]
        admin_svc = s.one(docs, "Service", "weir-gateway-admin")
        assert [(p["name"], p["targetPort"]) for p in admin_svc["spec"]["ports"]] == [("admin", "admin")]
        dep = s.one(docs, "Deployment", "weir-gateway")
        c = s.container(dep, "weir")
        token = gateway_config(docs)["server"]["admin_token_sha256"]
        m = re.fullmatch(r"\$\{file:(/[^}]+)\}", token)
        assert m, f"{overlay}: admin_token_sha256 = {token!r} does not read a file"
        secrets = s.secret_volume_files(dep, c)
        assert secrets.get(m.group(1)) == ("weir-admin-token", "token.sha256"), secrets
        mount = next(mt for mt in c["volumeMounts"] if m.group(1).startswith(mt["mountPath"] + "/"))
        assert mount["readOnly"] is True
        vol = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}[mount["name"]]
        for src in vol.get("projected", {}).get("sources", [vol]):
            sec = src.get("secret")
            if sec:
                assert not sec.get("optional"), "the admin token Secret must be required"
                assert [i["key"] for i in sec["items"]] == ["token.sha256"], "the gateway needs the digest only"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] in ("/healthz", "/readyz"), probe


# ---------------------------------------------------------------- etcd maintenance


def test_etcd_maintenance_cronjobs(rendered):
    """Backup and defrag use the StatefulSet's etcd image; defrag goes through
    every member once, one at a time (init containers, in order), never
    disarms alarms; the backup keeps a whole number of snapshots on its PVC;
    the rotation script is the repository's."""
    comp = s.K8S / "components" / "etcd-maintenance"
    for overlay, docs in rendered.items():
        sts = s.one(docs, "StatefulSet", "weir-etcd")
        image = s.container(sts, "etcd")["image"]
        backup = s.one(docs, "CronJob", "weir-etcd-backup")
        defrag = s.one(docs, "CronJob", "weir-etcd-defrag")
        for cj in (backup, defrag):
            assert cj["spec"]["concurrencyPolicy"] == "Forbid"
            assert s.pod_spec(cj)["restartPolicy"] == "Never"
            assert s.pod_labels(cj)["app.kubernetes.io/name"] == "weir-etcd-maintenance"
        spec = s.pod_spec(defrag)
        members = [f"http://weir-etcd-{i}.weir-etcd:2379" for i in range(sts["spec"]["replicas"])]
        inits = spec["initContainers"]
        assert [c["name"] for c in inits] == [f"defrag-{i}" for i in range(len(members))]
        for c, url in zip(inits, members):
            assert c["image"] == image and c["command"] == ["etcdctl"] and c["args"] == ["defrag"]
            assert {e["name"]: e.get("value") for e in c["env"]}["ETCDCTL_ENDPOINTS"] == url
        (alarms,) = spec["containers"]
        assert alarms["args"] == ["alarm", "list"], "the defrag Job must not disarm alarms"
        assert "disarm" not in yaml.safe_dump(defrag)
        spec = s.pod_spec(backup)
        snap, verify = spec["initContainers"]
        assert snap["image"] == image and snap["command"] == ["etcdctl"] and snap["args"][:2] == ["snapshot", "save"]
        assert verify["image"] == image and verify["command"] == ["etcdutl"]
        assert verify["args"][:3] == ["snapshot", "status", snap["args"][2]]
        (rotate,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in rotate["env"]}
        assert int(env["KEEP_SNAPSHOTS"]) >= 1
        assert rotate["args"] == [snap["args"][2]]
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in rotate["volumeMounts"]}
        claim = vols[mounts["/backup"]]["persistentVolumeClaim"]["claimName"]
        s.one(docs, "PersistentVolumeClaim", claim)
        script = s.configmap_file(docs, backup, rotate, rotate["command"][1])
        assert script == (comp / "rotate-snapshots.sh").read_text()


def test_restore_template_is_a_valid_pod_for_each_member(rendered):
    """restore-member.yaml, with its placeholders filled in as the README
    does, is a valid Pod for the restricted profile that restores into the
    member's own claim with the StatefulSet's cluster layout."""
    text = (s.K8S / "components" / "etcd-maintenance" / "restore-member.yaml").read_text()
    sts = s.one(rendered["cpu"], "StatefulSet", "weir-etcd")
    etcd_args = s.container(sts, "etcd")["args"]
    for i in range(sts["spec"]["replicas"]):
        pod = yaml.safe_load(text.replace("@MEMBER@", str(i)).replace("@SNAPSHOT@", "weir-etcd-20250101T001700Z.db"))
        assert "@" not in yaml.safe_dump(pod)
        pod["metadata"]["namespace"] = "weir"
        for version in K8S_VERSIONS:
            kv.validate(pod, version, strict=True)
        (restore,) = pod["spec"]["containers"]
        assert restore["image"] == s.container(sts, "etcd")["image"]
        assert s.arg_value(restore["args"], "--name") == f"weir-etcd-{i}"
        assert s.arg_value(restore["args"], "--initial-cluster") == s.arg_value(etcd_args, "--initial-cluster")
        assert s.arg_value(restore["args"], "--data-dir") == s.arg_value(etcd_args, "--data-dir")
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        tmpl = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        assert claims["data"] == f"{tmpl}-weir-etcd-{i}"
        assert claims["backup"] == "weir-etcd-backup"
        psc = pod["spec"]["securityContext"]
        assert psc["runAsUser"] == s.pod_spec(sts)["securityContext"]["runAsUser"]


# ---------------------------------------------------------------- etcd TLS


ETCD_TLS_DIR = "/etc/etcd/tls"
ETCD_TLS_FILES = (f"{ETCD_TLS_DIR}/ca.crt", f"{ETCD_TLS_DIR}/tls.crt", f"{ETCD_TLS_DIR}/tls.key")
# Where each kind of client takes the CA, its certificate and its key.
ENGINE_TLS_FLAGS = ("--register-cacert", "--register-cert", "--register-key")
WEIRCTL_TLS_FLAGS = ("--cacert", "--cert", "--key")
ETCDCTL_TLS_ENV = ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")


def etcd_tls_problems(docs: list[dict], secret: str = "weir-etcd-tls") -> list[str]:
    """What keeps `docs` from being etcd with TLS and client certificates
    everywhere (empty = none): etcd listens for clients on https alone, with
    --client-cert-auth; every client (gateway, engines, import Job,
    maintenance Jobs) names https URLs and has the CA, its certificate and
    its key from the Secret, mounted read-only; the gateway's weir.toml has
    them in [source.etcd] with the endpoints of its --etcd."""
    problems = []
    sts = s.find(docs, "StatefulSet", "weir-etcd")
    if sts:
        etcd = s.container(sts[0], "etcd")
        args = etcd["args"]
        if s.arg_value(args, "--listen-client-urls") != "https://0.0.0.0:2379":
            problems.append(f"etcd listens for clients at {s.arg_value(args, '--listen-client-urls')}")
        if s.arg_value(args, "--client-cert-auth") != "true":
            problems.append("etcd does not ask for client certificates")
        if not s.arg_value(args, "--advertise-client-urls").startswith("https://"):
            problems.append("etcd advertises plain client URLs")
        for flag, path in zip(("--trusted-ca-file", "--cert-file", "--key-file"), ETCD_TLS_FILES):
            if s.arg_value(args, flag) != path:
                problems.append(f"etcd {flag} is {s.arg_value(args, flag)}")
        ports = {p["name"]: p["containerPort"] for p in etcd["ports"]}
        if ports != {"client": 2379, "peer": 2380, "metrics": 2381}:
            problems.append(f"etcd container ports {ports}")
        svc = {p["name"]: p["port"] for p in s.one(docs, "Service", "weir-etcd")["spec"]["ports"]}
        if svc != {"client": 2379, "peer": 2380}:
            problems.append(f"etcd Service ports {svc}")
    seen = set()
    for place, flag, urls, _ in s.etcd_references(docs):
        kind, name = place.split()[0].split("/")
        seen.add(name)
        if {u.split("://")[0] for u in urls} != {"https"}:
            problems.append(f"{place}: {urls} are not all https")
        w = s.one(docs, kind, name)
        spec = s.pod_spec(w)
        c = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == place.split()[1])
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        if ETCD_TLS_DIR not in mounts or not mounts[ETCD_TLS_DIR].get("readOnly"):
            problems.append(f"{place}: nothing mounted read-only at {ETCD_TLS_DIR}")
        else:
            vol = {v["name"]: v for v in spec["volumes"]}[mounts[ETCD_TLS_DIR]["name"]]
            if vol.get("secret", {}).get("secretName") != secret:
                problems.append(f"{place}: {ETCD_TLS_DIR} is not the Secret {secret}")
        if flag == s.ETCD_URL_ENV:
            env = {e["name"]: e.get("value") for e in c["env"]}
            got = tuple(env.get(k) for k in ETCDCTL_TLS_ENV)
        elif flag == "--register-etcd":
            got = tuple(s.arg_value(c["args"], f) for f in ENGINE_TLS_FLAGS)
        elif name == "weir-config-import":
            got = tuple(s.arg_value(c["args"], f) for f in WEIRCTL_TLS_FLAGS)
        else:  # the gateway: its weir.toml
            cfg = tomllib.loads(s.configmap_file(docs, w, c, s.arg_value(c["args"], "--config")))
            etcd_cfg = cfg.get("source", {}).get("etcd", {})
            tls = etcd_cfg.get("tls", {})
            got = (tls.get("ca"), tls.get("cert"), tls.get("key"))
            if etcd_cfg.get("endpoints") != urls:
                problems.append(f"{place}: [source.etcd] endpoints {etcd_cfg.get('endpoints')} are not --etcd's")
        if got != ETCD_TLS_FILES:
            problems.append(f"{place}: CA, certificate and key are {got}")
    missing = {"weir-gateway", "weir-engine-v1", "weir-engine-v2", "weir-config-import"} - seen
    if missing:
        problems.append(f"{sorted(missing)} name no etcd")
    return problems


def test_etcd_tls_component(rendered, with_components):
    """etcd-tls: etcd serves https with client certificates on its one client
    port (no plain listener is left); every client (the gateway, the engines
    that register, the import Job, the maintenance Jobs) uses https on that
    port with the CA and the client certificate from the Secret; the
    NetworkPolicy stays the base's (every client on the client port); the
    gateway's bootstrap keeps the base's [server]."""
    for render in ("cpu+etcd-tls", "cpu+all", "gpu+all"):
        docs = with_components[render]
        assert not etcd_tls_problems(docs), (render, etcd_tls_problems(docs))
        names = {p.split()[0].split("/")[1] for p, *_ in s.etcd_references(docs)}
        assert {"weir-etcd-backup", "weir-etcd-defrag"} <= names, names
        for place, flag, urls, _ in s.etcd_references(docs):
            assert not s.etcd_url_problems(docs, urls, one_member=" defrag-" in place), (render, place, urls)
        base = tomllib.loads((s.K8S / "base" / "gateway" / "weir.toml").read_text())
        assert gateway_config(docs)["server"] == base["server"], \
            "components/etcd-tls/weir.toml's [server] differs from the base's"
    assert s.one(with_components["cpu+etcd-tls"], "NetworkPolicy", "weir-etcd") == \
        s.one(rendered["cpu"], "NetworkPolicy", "weir-etcd")


def test_etcd_tls_check_catches_a_plain_client(with_components, rendered):
    """Control: the overlay without the component, an engine left on
    http://, an engine without its client certificate, a plain listener
    beside the TLS one: each is reported."""
    assert etcd_tls_problems(rendered["cpu"])

    def engine(docs):
        return s.container(s.one(docs, "Deployment", "weir-engine-v1"), "engine")

    def plain_url(docs):
        c = engine(docs)
        url = s.arg_value(c["args"], "--register-etcd")
        c["args"] = s.replace_arg(c["args"], "--register-etcd", url.replace("https://", "http://"))

    def no_client_cert(docs):
        c = engine(docs)
        c["args"] = s.drop_args(c["args"], "--register-cert", "--register-key")

    def plain_listener(docs):
        args = s.container(s.one(docs, "StatefulSet", "weir-etcd"), "etcd")["args"]
        i = next(i for i, a in enumerate(args) if a.startswith("--listen-client-urls="))
        args[i] += ",http://0.0.0.0:2378"

    for change, expect in ((plain_url, "are not all https"), (no_client_cert, "CA, certificate and key"),
                           (plain_listener, "listens for clients")):
        docs = copy.deepcopy(with_components["cpu+etcd-tls"])
        change(docs)
        problems = etcd_tls_problems(docs)
        assert any(expect in p for p in problems), (change.__name__, problems)


def test_etcd_tls_certificate_example_names_every_host(with_components):
    """certificate.example.yaml's DNS names cover every host a client puts in
    an https URL, and the certificate serves both ends."""
    cert = yaml.safe_load((s.K8S / "components" / "etcd-tls" / "certificate.example.yaml").read_text())
    assert cert["spec"]["secretName"] == "weir-etcd-tls"
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
    names = set(cert["spec"]["dnsNames"])
    docs = with_components["cpu+all"]
    hosts = {u.split("://")[1].rsplit(":", 1)[0] for _, _, urls, _ in s.etcd_references(docs)
             for u in urls if u.startswith("https://")}
    sts = s.one(docs, "StatefulSet", "weir-etcd")
    advertise = s.arg_value(s.container(sts, "etcd")["args"], "--advertise-client-urls")
    for i in range(sts["spec"]["replicas"]):
        hosts.add(s.kube_expand(advertise, {"POD_NAME": f"weir-etcd-{i}", "POD_NAMESPACE": "weir"})
                  .split("://")[1].rsplit(":", 1)[0])
    assert len(hosts) > 3 and hosts <= names, hosts - names


# ---------------------------------------------------------------- the gateway's cache


def test_gateway_cache_pvc_component(rendered, with_components):
    """gateway-cache-pvc: the cache directory is a ReadWriteMany claim shared
    by the replicas, writable by the gateway's user; without it an emptyDir."""
    for render, docs in (("cpu+gateway-cache-pvc", with_components["cpu+gateway-cache-pvc"]),
                         ("gpu+all", with_components["gpu+all"]), ("cpu", rendered["cpu"])):
        dep = s.one(docs, "Deployment", "weir-gateway")
        c = s.container(dep, "weir")
        cache_dir = s.arg_value(c["args"], "--etcd-cache").rsplit("/", 1)[0]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cache_dir)
        assert not mount.get("readOnly")
        vol = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}[mount["name"]]
        if render == "cpu":
            assert set(vol) == {"name", "emptyDir"}
            continue
        assert set(vol) == {"name", "persistentVolumeClaim"}, vol
        pvc = s.one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert s.pod_spec(dep)["securityContext"]["fsGroup"] == s.pod_spec(dep)["securityContext"]["runAsGroup"]
