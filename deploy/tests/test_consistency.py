"""The manifests and images agree with what the binaries accept: flags, env
names, config, ports and probe paths, checked against the real `weir` and
`weir-engine` (run on OS-chosen ports with the manifests' own arguments)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

import support as s


def test_gateway_args_and_env_are_accepted(rendered, weir_help):
    for overlay, docs in rendered.items():
        c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
        assert not s.check_args(c["args"], weir_help), f"{overlay}: {s.check_args(c['args'], weir_help)}"
        for e in c.get("env", []):
            assert s.env_known(e["name"], s.weir_bin(), weir_help), f"weir does not read {e['name']}"


def test_engine_args_and_env_are_accepted(rendered, engine_help):
    binary = s.engine_bin()
    for overlay, docs in rendered.items():
        for name in ("weir-engine-v1", "weir-engine-v2"):
            c = s.container(s.one(docs, "Deployment", name), "engine")
            problems = s.check_args(c["args"], engine_help)
            assert not problems, f"{overlay} {name}: {problems}"
            for e in c.get("env", []):
                assert s.env_known(e["name"], binary, engine_help), f"weir-engine does not read {e['name']}"


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


def render_gateway_config(docs, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Runs the init container's weir-render-config (the real script, the real
    `weir check`) on the ConfigMap, with Service names resolved to loopback
    addresses by a stand-in for getent. Returns the rendered file and the
    name -> address map."""
    dep = s.one(docs, "Deployment", "weir-gateway")
    spec = s.pod_spec(dep)
    (init,) = spec["initContainers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}

    # The init container's command is the script the weir image installs.
    script = s.DOCKER / "weir-render-config"
    copies = dockerfile_copies(s.DOCKER / "weir.Dockerfile")
    assert copies.get(init["command"][0]) == "deploy/docker/weir-render-config", init["command"][0]
    template_in_pod, output_in_pod = init["command"][1], init["command"][2]

    cm_volume = volumes[mounts[template_in_pod.rsplit("/", 1)[0]]]
    cm = s.one(docs, "ConfigMap", cm_volume["configMap"]["name"])
    template = tmp_path / "template.toml"
    template.write_text(cm["data"][template_in_pod.rsplit("/", 1)[1]])
    assert "emptyDir" in volumes[mounts[output_in_pod.rsplit("/", 1)[0]]]

    # Every Service gets a distinct loopback address; anything else is unknown.
    services = [svc["metadata"]["name"] for svc in s.find(docs, "Service")]
    addrs = {name: f"127.0.0.{10 + i}" for i, name in enumerate(services)}
    resolver = tmp_path / "resolve"
    resolver.write_text("#!/bin/sh\ncase \"$1\" in\n" + "".join(
        f"  {n}) echo '{a} STREAM {n}' ;;\n" for n, a in addrs.items()) + "esac\n")
    resolver.chmod(resolver.stat().st_mode | stat.S_IXUSR)
    out_file = tmp_path / "weir.toml"
    run = subprocess.run([str(script), str(template), str(out_file)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "WEIR_RESOLVE": str(resolver), "WEIR_BIN": str(s.weir_bin())},
                         timeout=60)
    assert run.returncode == 0, f"weir-render-config failed:\n{run.stderr}"
    assert "ok:" in run.stderr, run.stderr
    return out_file, addrs


def dockerfile_copies(path: Path) -> dict[str, str]:
    final = s.stages(s.parse_dockerfile(path))[-1]
    out = {}
    for i in final:
        if i.op == "COPY":
            srcs, dest, frm = s.copy_sources(i)
            if frm is None and len(srcs) == 1:
                out[dest] = srcs[0]
    return out


def test_configmap_renders_and_passes_weir_check(rendered, tmp_path):
    for overlay, docs in rendered.items():
        d = tmp_path / overlay
        d.mkdir()
        out, addrs = render_gateway_config(docs, d)
        cfg = tomllib.loads(out.read_text())
        used = {b["address"].rsplit(":", 1)[0] for p in cfg["pools"] for b in p["backends"]}
        assert used and used <= set(addrs.values()), used


def test_render_script_refuses_unknown_names_and_bad_configs(tmp_path):
    """Control: the init container fails (and is retried) rather than start
    weir on a config it could not resolve or that weir rejects."""
    resolver = tmp_path / "resolve"
    resolver.write_text("#!/bin/sh\n[ \"$1\" = known ] && echo '127.0.0.9 STREAM known'\nexit 0\n")
    resolver.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "WEIR_RESOLVE": str(resolver), "WEIR_BIN": str(s.weir_bin())}
    base = ('[[pools]]\nname = "p"\nbackends = [{ address = "%s:8000" }]\n'
            '[[routes]]\nname = "r"\narms = [{ name = "a", pool = "p", weight = %d }]\n')
    for host, weight, ok in [("known", 1, True), ("unknown", 1, False), ("known", -1, False)]:
        src, out = tmp_path / "in.toml", tmp_path / f"out-{host}-{weight}.toml"
        src.write_text(base % (host, weight))
        run = subprocess.run([str(s.DOCKER / "weir-render-config"), str(src), str(out)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert (run.returncode == 0) == ok, run.stderr
        assert out.exists() == ok
        if ok:
            assert '"127.0.0.9:8000"' in out.read_text()


def test_gateway_pools_point_at_engine_services(rendered):
    """Each backend NAME:PORT is a Service port that leads to the engine's
    HTTP listener (its --http port), for the pool's protocol."""
    for overlay, docs in rendered.items():
        cfg = tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"])
        for pool in cfg["pools"]:
            for b in pool["backends"]:
                host, port = b["address"].rsplit(":", 1)
                svc = s.one(docs, "Service", host)
                (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
                dep = [d for d in s.find(docs, "Deployment")
                       if s.labels_match(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
                assert len(dep) == 1
                c = s.container(dep[0], "engine")
                target = s.named_port(c, sp["targetPort"])
                flag = "--http" if pool.get("protocol", "http1") == "http1" else "--grpc"
                assert int(s.arg_value(c["args"], flag).rsplit(":", 1)[1]) == target, f"{overlay} {pool['name']}"
            # The pool's http health check asks a path the engine serves
            # (checked against a running engine below).
            assert pool["health_check"]["kind"] in ("http", "tcp")


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
        # --config is the rendered file in the volume the init container writes.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        cfg_path = s.arg_value(c["args"], "--config")
        assert mounts.get(cfg_path.rsplit("/", 1)[0]) == "config"
        assert s.pod_spec(dep)["initContainers"][0]["command"][2] == cfg_path


def test_gateway_probes_answer_on_the_rendered_config(rendered, tmp_path):
    """weir runs the ConfigMap's config (listeners moved to 127.0.0.1:0) and
    every probe path of the Deployment answers 200 on the admin listener."""
    docs = rendered["cpu"]
    config, _ = render_gateway_config(docs, tmp_path)
    text = config.read_text()
    text = re.sub(r'(?m)^(proxy|admin)\s*=\s*"[^"]*"', r'\1 = "127.0.0.1:0"', text)
    text = re.sub(r"(?m)^grace_period_seconds\s*=.*$", "grace_period_seconds = 1", text)
    local = tmp_path / "local.toml"
    local.write_text(text)
    c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
    proc, _proxy, admin = s.start_weir(local)
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = c[probe]["httpGet"]["path"]
            status, body = s.http("GET", f"http://{admin}{path}")
            assert status == 200, f"{probe} {path}: {status} {body[:200]!r}"
    finally:
        proc.stop()


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
    copies = dockerfile_copies(df)
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
    cfg = tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-gateway-config")["data"]["weir.toml"])
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
