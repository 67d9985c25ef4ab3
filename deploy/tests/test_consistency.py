"""The manifests and images agree with what the binaries accept: flags, env
names, config, ports and probe paths, checked against the real `weir`,
`weir-engine` and `weirctl` (run on OS-chosen ports with the manifests' own
arguments). The etcd wiring (URLs, pools, the import Job) is checked here
statically and in test_etcd_deployment.py against a running etcd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import support as s


def test_gateway_args_and_env_are_accepted(rendered, with_components, weir_help):
    for overlay, docs in {**rendered, **with_components}.items():
        c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
        assert not s.check_args(c["args"], weir_help), f"{overlay}: {s.check_args(c['args'], weir_help)}"
        for e in c.get("env", []):
            assert s.env_known(e["name"], s.weir_bin(), weir_help), f"weir does not read {e['name']}"


def test_engine_args_and_env_are_accepted(rendered, with_components, engine_help):
    binary = s.engine_bin()
    for overlay, docs in {**rendered, **with_components}.items():
        for name in ("weir-engine-v1", "weir-engine-v2"):
            c = s.container(s.one(docs, "Deployment", name), "engine")
            problems = s.check_args(c["args"], engine_help)
            assert not problems, f"{overlay} {name}: {problems}"
            # $(VAR) in args is the kubelet's to expand, from the container's
            # env; a name not defined there would stay as written.
            expanded = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(c["args"])))
            env_names = {e["name"] for e in c.get("env", [])}
            assert expanded <= env_names, f"{overlay} {name}: args use undefined {expanded - env_names}"
            for e in c.get("env", []):
                assert e["name"] in expanded or s.env_known(e["name"], binary, engine_help), \
                    f"weir-engine does not read {e['name']} (nor do its args use it)"


def test_engine_accepts_every_device_the_overlays_use(rendered, engine_help):
    """clap parses --device before anything starts: a bad value exits 2 with
    "invalid value"; a good one gets as far as checking --models."""
    binary = s.engine_bin()
    devices = {s.arg_value(s.container(s.one(docs, "Deployment", "weir-engine-v1"), "engine")["args"], "--device")
               for docs in rendered.values()}
    assert devices == {"cpu", "cuda"}
    for device in [*devices, "no-such-device"]:
        out = subprocess.run([str(binary), f"--device={device}", "--models=/nonexistent-weir-models"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        if device == "no-such-device":
            assert "invalid value" in out.stderr, out.stderr
        else:
            assert "invalid value" not in out.stderr and "--models" in out.stderr, out.stderr


def test_a_file_config_may_name_the_engine_services(rendered, tmp_path):
    """A gateway run from a file (rather than from etcd) names the engine
    Services of the manifests directly: weir resolves names itself, so no
    init container turns them into addresses; `weir check` accepts the file
    and the names are exactly the manifests' Services and ports."""
    docs = rendered["cpu"]
    ns = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"
                and d["metadata"]["name"].startswith("weir-engine-")}
    assert services, "no engine Services"
    pools, arms = [], []
    for name, svc in sorted(services.items()):
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
        address = f"{name}.{ns}.svc.cluster.local:{port}"
        pools.append(f'[[pools]]\nname = "{name}"\nbackends = [{{ address = "{address}" }}]\n'
                     f'resolve = {{ refresh_ms = 5000 }}\n')
        arms.append(f'{{ name = "{name}", pool = "{name}", weight = 1 }}')
    cfg = tmp_path / "weir.toml"
    cfg.write_text("".join(pools) + '[[routes]]\nname = "chat"\narms = [' + ", ".join(arms) + "]\n")
    run = subprocess.run([str(s.weir_bin()), "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    # Control: a name that is not a host name is refused.
    cfg.write_text(cfg.read_text().replace(".svc.cluster.local:8000", ".svc.cluster.local:http"))
    run = subprocess.run([str(s.weir_bin()), "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "is not an IP:PORT or HOST:PORT address" in run.stdout + run.stderr


def test_gateway_ports_match_its_config(rendered):
    for overlay, docs in rendered.items():
        dep = s.one(docs, "Deployment", "weir-gateway")
        c = s.container(dep, "weir")
        cfg = tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["proxy"] == int(cfg["server"]["proxy"].rsplit(":", 1)[1])
        assert ports["admin"] == int(cfg["server"]["admin"].rsplit(":", 1)[1])
        assert cfg["server"]["proxy"].startswith("0.0.0.0:") and cfg["server"]["admin"].startswith("0.0.0.0:")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert s.named_port(c, c[probe]["httpGet"]["port"]) == ports["admin"], probe
        # --config is the ConfigMap's file.
        cfg_path = s.arg_value(c["args"], "--config")
        text = s.configmap_file(docs, dep, c, cfg_path)
        assert text == s.by_prefix(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"]




def healthcheck_command(dockerfile: Path) -> list[str]:
    (hc,) = [i for i in s.parse_dockerfile(dockerfile) if i.op == "HEALTHCHECK"]
    cmd = hc.args[hc.args.index("CMD") + 3:].strip()
    return json.loads(cmd)


def run_healthcheck(dockerfile: Path, port_in_image: int, real_addr: str) -> subprocess.CompletedProcess:
    host, port = real_addr.rsplit(":", 1)
    cmd = healthcheck_command(dockerfile)
    assert f"/dev/tcp/127.0.0.1/{port_in_image} " in cmd[-1], cmd
    cmd[-1] = cmd[-1].replace(f"/dev/tcp/127.0.0.1/{port_in_image} ", f"/dev/tcp/{host}/{port} ")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10)


def test_weir_image_default_config_and_healthcheck(tmp_path):
    """The image's /etc/weir/weir.toml passes `weir check`; its HEALTHCHECK
    command asks that config's admin port and succeeds against a running weir."""
    df = s.DOCKER / "weir.Dockerfile"
    copies = s.final_copies(df)
    src = s.ROOT / copies["/etc/weir/weir.toml"]
    env = dict(kv for i in s.parse_dockerfile(df) if i.op == "ENV"
               for kv in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", i.args))
    assert env.get("WEIR_CONFIG") == "/etc/weir/weir.toml"
    out = subprocess.run([str(s.weir_bin()), "check", "--config", str(src)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    cfg = tomllib.loads(src.read_text())
    admin_port = int(cfg["server"]["admin"].rsplit(":", 1)[1])
    text = re.sub(r'(?m)^(proxy|admin)\s*=\s*"[^"]*"', r'\1 = "127.0.0.1:0"', src.read_text())
    local = tmp_path / "weir.toml"
    local.write_text(text)
    proc, _proxy, admin = s.start_weir(local)
    try:
        run = run_healthcheck(df, admin_port, admin)
        assert run.returncode == 0, run.stderr
    finally:
        proc.stop()
    # Control: nothing listening there any more -> the check fails.
    assert run_healthcheck(df, admin_port, admin).returncode != 0


@pytest.mark.parametrize("name", ["weir-engine-v1", "weir-engine-v2"])
def test_engine_runs_with_the_manifest_and_its_probes_answer(rendered, engines, name):
    """The engine starts from the Deployment's own args (model volume filled by
    the init container's command, key from the ConfigMap) and every probe path
    answers 200; so does the gateway pools' health-check path."""
    addr = engines.start(name)
    docs = rendered["cpu"]
    c = s.container(s.one(docs, "Deployment", name), "engine")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        status, body = s.http("GET", f"http://{addr}{path}")
        assert status == 200, f"{probe} {path}: {status} {body[:200]!r}"
    cfg = tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])
    for pool in cfg["pools"]:
        hc = pool["health_check"]
        if hc["kind"] == "http":
            assert s.http("GET", f"http://{addr}{hc['path']}")[0] == 200, hc["path"]
    # Control: a version this Deployment does not serve is not ready.
    other = "2" if name.endswith("v1") else "1"
    assert s.http("GET", f"http://{addr}/v2/models/tiny-lm/versions/{other}/ready")[0] != 200


def test_engine_image_healthcheck(engines):
    addr = engines.start("weir-engine-v1")
    df = s.DOCKER / "weir-engine.Dockerfile"
    cmd = [i for i in s.parse_dockerfile(df) if i.op == "CMD"][-1]
    http_port = int(s.arg_value(json.loads(cmd.args), "--http").rsplit(":", 1)[1])
    for dockerfile in (df, s.DOCKER / "weir-engine-gpu.Dockerfile"):
        run = run_healthcheck(dockerfile, http_port, addr)
        assert run.returncode == 0, run.stderr


def test_engine_images_args_env_and_paths(engine_help):
    """The images' CMD flags and ENV names are the engine's, and the paths
    they name exist in the image (as COPY destinations)."""
    binary = s.engine_bin()
    for name in ("weir-engine", "weir-engine-gpu"):
        df = s.DOCKER / f"{name}.Dockerfile"
        instrs = s.parse_dockerfile(df)
        cmd = json.loads([i for i in instrs if i.op == "CMD"][-1].args)
        assert not s.check_args(cmd, engine_help), s.check_args(cmd, engine_help)
        final = s.stages(instrs)[-1]
        dests = [s.copy_sources(i)[1].rstrip("/") for i in final if i.op == "COPY"]
        for i in final:
            if i.op != "ENV":
                continue
            for k, v in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", i.args):
                if k.startswith("NVIDIA_"):
                    continue  # read by the NVIDIA container runtime
                assert s.env_known(k, binary, engine_help), f"{name}: weir-engine does not read {k}"
                if v.startswith("/"):
                    assert any(v == d or v.startswith(d + "/") for d in dests), f"{name}: {k}={v} not in the image"


def test_etcd_flags_exist(rendered):
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd not installed (scripts/deps.sh installs etcd-server): cannot check its flags")
    out = subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=30)
    known = set(re.findall(r"--[a-z0-9-]+", out.stdout + out.stderr))
    args = s.container(s.one(rendered["cpu"], "StatefulSet", "weir-etcd"), "etcd")["args"]
    unknown = [a.split("=")[0] for a in args if a.split("=")[0] not in known]
    assert not unknown, f"flags the local etcd does not know: {unknown}"


# ---------------------------------------------------------------- the etcd wiring


def routes_config(docs) -> dict:
    return tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])


def test_etcd_urls_name_the_etcd_service_and_client_port(rendered):
    """Every etcd URL in every manifest (gateway --etcd, engines
    --register-etcd, the import Job's --etcd, the maintenance Jobs'
    ETCDCTL_ENDPOINTS) is the etcd Service or its members on the client port,
    with etcd's scheme; all use one prefix. (The etcd-tls component's URLs:
    test_manifests.py.)"""
    for overlay, docs in rendered.items():
        refs = s.etcd_references(docs)
        where = {r[0].split()[0] for r in refs}
        assert {"Deployment/weir-gateway", "Deployment/weir-engine-v1", "Deployment/weir-engine-v2",
                "Job/weir-config-import", "CronJob/weir-etcd-backup", "CronJob/weir-etcd-defrag"} <= where, where
        for place, flag, urls, _prefix in refs:
            # defrag-N talks to member N alone, on purpose.
            one_member = flag == s.ETCD_URL_ENV and " defrag-" in place
            problems = s.etcd_url_problems(docs, urls, one_member=one_member)
            assert not problems, f"{overlay} {place} {flag}: {problems}"
        prefixes = {r[3] for r in refs}
        assert len(prefixes) == 1, f"{overlay}: etcd prefixes differ: {refs}"


def test_etcd_url_check_catches_mistakes(rendered):
    """Control: a wrong name, port or scheme, or a partial member list, is reported."""
    docs = rendered["cpu"]
    assert not s.etcd_url_problems(docs, ["http://weir-etcd:2379"])
    for bad in (["http://etcd:2379"], ["http://weir-etcd:2380"], ["https://weir-etcd:2379"],
                ["http://weir-etcd-3.weir-etcd:2379"], ["http://weir-etcd-0.weir-etcd:2379"]):
        assert s.etcd_url_problems(docs, bad), bad


def test_the_binaries_default_to_the_same_prefix(weir_help, engine_help, weirctl_help):
    """The manifests leave the prefix at its default: it is the same in all three."""
    assert s.DEFAULT_PREFIX in weir_help.text
    for h in (engine_help, weirctl_help):
        assert f"[default: {s.DEFAULT_PREFIX}]" in h.text, h.text


def registration_problems(docs, cfg: dict) -> list[str]:
    """Engine Deployments vs the imported config: each `--pool` is a
    `registered = true` pool without static backends; each registered pool
    has a Deployment joining it; the advertised address is the pod IP (from
    the downward API) and the listener the pool's protocol speaks."""
    problems = []
    pools = {p["name"]: p for p in cfg.get("pools", [])}
    joined = set()
    for dep in s.find(docs, "Deployment"):
        if dep["metadata"]["labels"].get("app.kubernetes.io/name") != "weir-engine":
            continue
        name = dep["metadata"]["name"]
        c = s.container(dep, "engine")
        pool_name = s.arg_value(c["args"], "--pool")
        if pool_name is None:
            problems.append(f"{name}: no --pool")
            continue
        joined.add(pool_name)
        pool = pools.get(pool_name)
        if pool is None:
            problems.append(f"{name}: --pool {pool_name} is not a pool of the imported config")
            continue
        if not pool.get("registered"):
            problems.append(f"{name}: pool {pool_name} is not `registered = true`")
        if pool.get("backends"):
            problems.append(f"pool {pool_name}: static backends {pool['backends']}")
        advertise = s.arg_value(c["args"], "--advertise") or ""
        env = {e["name"]: e for e in c.get("env", [])}
        pod_ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if pod_ip != "status.podIP":
            problems.append(f"{name}: POD_IP is not the downward API's status.podIP")
        host, _, port = advertise.rpartition(":")
        if host != "$(POD_IP)":
            problems.append(f"{name}: --advertise {advertise!r} is not $(POD_IP):PORT")
        listener = "--http" if pool.get("protocol", "http1") == "http1" else "--grpc"
        if port != s.arg_value(c["args"], listener).rsplit(":", 1)[1]:
            problems.append(f"{name}: advertises port {port}, but pool {pool_name} ({pool.get('protocol', 'http1')}) "
                            f"speaks to the {listener} listener")
        elif int(port) not in {p["containerPort"] for p in c["ports"]}:
            problems.append(f"{name}: port {port} is not a container port")
    for pool_name, pool in pools.items():
        if pool.get("registered") and pool_name not in joined:
            problems.append(f"registered pool {pool_name}: no engine Deployment joins it")
    return problems


def test_engines_join_registered_pools_of_the_imported_config(rendered):
    for overlay, docs in rendered.items():
        problems = registration_problems(docs, routes_config(docs))
        assert not problems, f"{overlay}: {problems}"


def test_registration_check_catches_mistakes(rendered):
    """Control: a renamed pool, a pool that is not registered, an h2c pool
    the engines advertise their HTTP port for, are all reported."""
    docs = rendered["cpu"]
    for change, expect in [
        (lambda p: p.update(name="engine-v9"), "not a pool"),
        (lambda p: p.update(registered=False), "not `registered = true`"),
        (lambda p: p.update(protocol="h2c"), "--grpc listener"),
    ]:
        cfg = routes_config(docs)
        change(cfg["pools"][0])
        problems = registration_problems(docs, cfg)
        assert any(expect in p for p in problems), (expect, problems)


def test_engine_accepts_the_registration_flags(rendered, engine_help):
    """clap parses `--advertise` as IP:PORT before anything starts: with
    POD_IP expanded as the kubelet does, the value is accepted (the engine
    gets as far as checking --models); unexpanded, it is refused."""
    binary = s.engine_bin()
    c = s.container(s.one(rendered["cpu"], "Deployment", "weir-engine-v1"), "engine")
    register = [a for a in c["args"] if a.partition("=")[0] in ("--register-etcd", "--pool", "--advertise")]
    assert len(register) == 3, register
    for pod_ip, ok in [("10.1.2.3", True), (None, False)]:
        args = [s.kube_expand(a, {"POD_IP": pod_ip}) if pod_ip else a for a in register]
        out = subprocess.run([str(binary), *args, "--models=/nonexistent-weir-models"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        if ok:
            assert "invalid value" not in out.stderr and "--models" in out.stderr, out.stderr
        else:
            assert "invalid value" in out.stderr, out.stderr


def test_import_job_runs_weirctl_with_accepted_flags(rendered, with_components, weirctl_help):
    """The Job runs the script the weirctl image installs; its flags are
    weirctl's global flags, and the weirctl commands the script runs exist."""
    binary = s.weirctl_bin()
    copies = s.final_copies(s.DOCKER / "weirctl.Dockerfile")
    for overlay, docs in {**rendered, **with_components}.items():
        (c,) = s.pod_spec(s.one(docs, "Job", "weir-config-import"))["containers"]
        script = c["command"][0]
        assert copies.get(script) == "deploy/docker/weir-import-config", (script, copies)
        problems = s.check_args(c["args"][1:], weirctl_help)
        assert not problems, f"{overlay}: {problems}"
    text = (s.DOCKER / "weir-import-config").read_text()
    used = set(re.findall(r'"\$weirctl" "\$@" (?:--json )?config (\w+)', text))
    assert used == {"check", "export", "import"}, used
    assert used <= s.subcommands(binary, "config")
    assert "--json" in weirctl_help.flags


def test_imported_config_passes_weirctl_check(rendered, tmp_path):
    """The routes ConfigMap is a config weirctl imports and weir accepts;
    control: a broken copy is refused."""
    for overlay, docs in rendered.items():
        f = tmp_path / f"{overlay}.toml"
        f.write_text(s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])
        out = s.weirctl("config", "check", str(f))
        assert out.stdout.startswith("ok:"), out.stdout
        out = subprocess.run([str(s.weir_bin()), "check", "--config", str(f)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(f.read_text().replace('pool = "engine-v2"', 'pool = "engine-v9"'))
    assert bad.read_text() != f.read_text()
    out = s.weirctl("config", "check", str(bad), check=False)
    assert out.returncode == 1 and "engine-v9" in out.stderr, out.stderr


def test_gateway_bootstrap_passes_weir_check_with_its_args(rendered, tmp_path):
    """`weir check` with the container's own arguments (--etcd, --etcd-cache;
    etcd is not asked): the bootstrap [server] and the etcd settings are
    valid. Control: a bad listener in the bootstrap fails."""
    for overlay, docs in rendered.items():
        args, _cache = s.local_gateway_args(docs, tmp_path / overlay, "http://127.0.0.1:9")
        out = subprocess.run([str(s.weir_bin()), "check", *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    config = Path(s.arg_value(args, "--config"))
    config.write_text(config.read_text().replace('proxy = "127.0.0.1:0"', 'proxy = "nowhere"'))
    out = subprocess.run([str(s.weir_bin()), "check", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
