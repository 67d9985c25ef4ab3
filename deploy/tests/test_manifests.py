"""The Kustomize overlays render, every object passes Kubernetes schema
validation, and the objects hold together (selectors, probes, budgets,
policies, GPU settings)."""

from __future__ import annotations

import copy
import tomllib

import kubernetes_validate as kv
import pytest
import yaml

import support as s

# Oldest Kubernetes the manifests target (preStop `sleep` is on by default
# from 1.30) and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kv.latest_version())
# Custom resources: no bundled schema; their fields are checked below.
CRD_KINDS = {"ServiceMonitor"}


@pytest.mark.parametrize("overlay", s.OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_schema_validation(rendered, overlay, version):
    problems = []
    for doc in rendered[overlay]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError:
            if doc["kind"] not in CRD_KINDS:
                problems.append(f"{where}: no schema for {doc['apiVersion']} in {version}")
        except kv.ValidationError as e:
            problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not problems, "\n".join(problems)


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
            ("NetworkPolicy", "weir-engine"), ("NetworkPolicy", "weir-etcd"),
            ("ServiceMonitor", "weir-gateway"), ("ServiceMonitor", "weir-engine"),
            ("Job", "weir-config-import"),
        ]:
            assert want in kinds, f"{overlay}: {want} missing"
        s.by_prefix(docs, "ConfigMap", "weir-gateway-config")
        s.by_prefix(docs, "ConfigMap", "weir-routes")
        s.by_prefix(docs, "ConfigMap", "weir-model-keys")
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"weir"}


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
        assert set(cfg) == {"server"}, f"bootstrap config has {sorted(set(cfg) - {'server'})}: they would be ignored"
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


def test_every_container_is_bounded_and_locked_down(rendered):
    """Resources on every container; the restricted Pod Security profile."""
    for overlay, docs in rendered.items():
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


def find_workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def find_pod_templates(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


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


def test_gateway_hpa_has_cpu_and_request_rate(rendered):
    hpa = s.one(rendered["cpu"], "HorizontalPodAutoscaler", "weir-gateway")
    kinds = {(m["type"], (m.get("resource") or m.get("pods", {}).get("metric", {})).get("name")) for m in hpa["spec"]["metrics"]}
    assert ("Resource", "cpu") in kinds
    assert ("Pods", "weir_requests_per_second") in kinds


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
        assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == ["weir_engine_queue_depth"]
    # The gateway, etcd and the import Job are the same in both overlays.
    for kind, name in [("Deployment", "weir-gateway"), ("StatefulSet", "weir-etcd"), ("Job", "weir-config-import")]:
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
        ("weir-etcd", ["weir-etcd"], {"weir-gateway", "weir-engine", "weirctl", "weir-etcd"}),
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


def test_service_monitors(rendered):
    """ServiceMonitor has no bundled schema: check its fields here."""
    for overlay, docs in rendered.items():
        for sm in s.find(docs, "ServiceMonitor"):
            where = f"{overlay} ServiceMonitor/{sm['metadata']['name']}"
            assert sm["apiVersion"] == "monitoring.coreos.com/v1", where
            assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}, where
            assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, where
            sel = sm["spec"]["selector"]["matchLabels"]
            services = [svc for svc in s.find(docs, "Service") if s.labels_match(sel, svc["metadata"].get("labels", {}))]
            assert services, f"{where} selects no Service"
            assert sm["spec"]["endpoints"], where
            for ep in sm["spec"]["endpoints"]:
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, where
                assert ep["path"] == "/metrics", where
                assert ep["interval"].endswith("s") and int(ep["interval"][:-1]) > 0, where
                for svc in services:
                    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}, \
                        f"{where}: Service {svc['metadata']['name']} has no port {ep['port']}"


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


def test_every_etcd_client_may_reach_etcd(rendered):
    """Every pod that names an etcd URL (the gateway, the engines that
    register, the import Job) is admitted to etcd's client port; of them,
    only the gateway reaches the engines."""
    for overlay, docs in rendered.items():
        etcd_policy = s.one(docs, "NetworkPolicy", "weir-etcd")
        engine_policy = s.one(docs, "NetworkPolicy", "weir-engine")
        clients = [w for w in find_pod_templates(docs) if w["metadata"]["name"] != "weir-etcd"
                   and any(":2379" in a for c in s.pod_spec(w)["containers"] for a in c.get("args", []))]
        names = {w["metadata"]["name"] for w in clients}
        assert {"weir-gateway", "weir-engine-v1", "weir-engine-v2", "weir-config-import"} <= names, names
        for w in clients:
            labels = w["spec"]["template"]["metadata"]["labels"]
            assert "client" in admitted_ports(etcd_policy, labels), \
                f"{overlay}: NetworkPolicy weir-etcd keeps {w['kind']}/{w['metadata']['name']} out"
            reaches_engines = bool(admitted_ports(engine_policy, labels))
            assert reaches_engines == (w["metadata"]["name"] == "weir-gateway"), \
                f"{overlay}: {w['metadata']['name']} reaches the engines: {reaches_engines}"


def test_network_policy_check_catches_a_missing_client(rendered):
    """Control: without the engines' peer the etcd policy keeps them out."""
    pol = copy.deepcopy(s.one(rendered["cpu"], "NetworkPolicy", "weir-etcd"))
    labels = s.one(rendered["cpu"], "Deployment", "weir-engine-v1")["spec"]["template"]["metadata"]["labels"]
    assert "client" in admitted_ports(pol, labels)
    for rule in pol["spec"]["ingress"]:
        rule["from"] = [p for p in rule["from"]
                        if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "weir-engine"]
    assert "client" not in admitted_ports(pol, labels)
