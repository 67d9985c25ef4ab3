"""The etcd-backed deployment, run for real against a local etcd: the import
Job's own command seeds it (once: running it again leaves an operator's
changes alone), the gateway runs with the Deployment's own arguments and
serves from etcd, the engines register in their pools with the manifests'
arguments and the gateway routes to them, a gateway restarted while etcd
is down serves from its cache, and replicas share one cache file (the
component gateway-cache-pvc) safely."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

import support as s


def admin_routes(admin: str) -> dict:
    status, body = s.http("GET", f"http://{admin}/admin/routes", headers=s.ADMIN_HEADERS)
    assert status == 200, body[:200]
    return json.loads(body)


def readyz(admin: str) -> tuple[int, dict]:
    status, body = s.http("GET", f"http://{admin}/readyz")
    return status, json.loads(body)


def arm_weights(admin: str) -> dict[str, int]:
    (chat,) = [r for r in admin_routes(admin)["routes"] if r["name"] == "chat"]
    return {a["name"]: a["weight"] for a in chat["arms"]}


def seeded_weights(docs) -> dict[str, int]:
    cfg = tomllib.loads(s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"])
    (chat,) = [r for r in cfg["routes"] if r["name"] == "chat"]
    return {a["name"]: a["weight"] for a in chat["arms"]}


@pytest.fixture(scope="module")
def seeded(rendered, etcd, tmp_path_factory):
    """The Job run once on the session's etcd, then the gateway on it with the
    Deployment's arguments. (Engines may have registered before the import,
    as they can in a cluster: their members are kept.)"""
    docs = rendered["cpu"]
    tmp = tmp_path_factory.mktemp("etcd-deployment")
    run = s.run_import_job(docs, tmp / "job", etcd.endpoint)
    assert run.returncode == 0, run.stderr
    assert "weir-import-config: imported" in run.stderr, run.stderr
    args, cache = s.local_gateway_args(docs, tmp / "gateway", etcd.endpoint)
    proc, proxy, admin = s.start_weir_args(args)
    yield {"docs": docs, "tmp": tmp, "proxy": proxy, "admin": admin, "cache": cache}
    proc.stop()


def test_the_gateway_serves_the_imported_config_and_its_probes_answer(seeded):
    docs, admin = seeded["docs"], seeded["admin"]
    c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        status, body = s.http("GET", f"http://{admin}{path}")
        assert status == 200, f"{probe} {path}: {status} {body[:200]!r}"
    status, body = readyz(admin)
    assert body["source"] == "etcd", body
    routes = admin_routes(admin)
    assert routes["source"]["kind"] == "etcd", routes["source"]
    assert {p["name"] for p in routes["pools"]} == {"engine-v1", "engine-v2"}
    assert arm_weights(admin) == seeded_weights(docs)
    # The cache file in the pod's writable volume holds what it applied.
    s.poll(lambda: seeded["cache"].is_file() and seeded["cache"].stat().st_size > 0, "the etcd cache file")


def test_the_admin_api_needs_the_token_and_the_probes_do_not(seeded):
    """weir.toml's admin_token_sha256 reads the digest from the Secret's
    file: the admin API answers only with the token; the probes' paths and
    the proxy need none."""
    docs, admin = seeded["docs"], seeded["admin"]
    c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert s.http("GET", f"http://{admin}{c[probe]['httpGet']['path']}")[0] == 200, probe
    for path in ("/admin/routes", "/metrics"):
        assert s.http("GET", f"http://{admin}{path}")[0] == 401, path
        wrong = {"authorization": "Bearer not-the-token"}
        assert s.http("GET", f"http://{admin}{path}", headers=wrong)[0] == 401, path
        assert s.http("GET", f"http://{admin}{path}", headers=s.ADMIN_HEADERS)[0] == 200, path


def test_running_the_job_again_keeps_operator_changes(seeded, etcd):
    """A re-run (every apply recreates the Job) finds a config and writes
    nothing: a canary split set with weirctl survives it."""
    docs, admin = seeded["docs"], seeded["admin"]
    seeded_split = seeded_weights(docs)
    try:
        s.weirctl("--etcd", etcd.endpoint, "weights", "set", "chat", "v1=50", "v2=50")
        s.poll(lambda: arm_weights(admin) == {"v1": 50, "v2": 50}, "the gateway applying 50/50")
        run = s.run_import_job(docs, seeded["tmp"] / "job-again", etcd.endpoint)
        assert run.returncode == 0, run.stderr
        assert "already holds a config" in run.stderr, run.stderr
        assert "weir-import-config: imported" not in run.stderr, run.stderr
        got = json.loads(s.weirctl("--etcd", etcd.endpoint, "--json", "weights", "get", "chat").stdout)
        assert got["weights"] == {"v1": 50, "v2": 50}, got
        assert arm_weights(admin) == {"v1": 50, "v2": 50}
    finally:
        pairs = [f"{k}={v}" for k, v in seeded_split.items()]
        s.weirctl("--etcd", etcd.endpoint, "weights", "set", "chat", *pairs)
    s.poll(lambda: arm_weights(admin) == seeded_split, "the seeded split back")


def test_engines_register_and_the_gateway_routes_to_them(seeded, engines, etcd):
    """Each engine started with its Deployment's arguments joins the pool its
    --pool names; the gateway sends each arm to its own version; an engine
    that shuts down leaves its pool at once (before its lease would expire)."""
    admin, proxy = seeded["admin"], seeded["proxy"]
    addrs = {v: engines.start(f"weir-engine-{v}") for v in ("v1", "v2")}

    def members():
        return {p["name"]: {b["address"] for b in p["backends"] if b["healthy"]}
                for p in admin_routes(admin)["pools"]}

    s.poll(lambda: members() == {"engine-v1": {addrs["v1"]}, "engine-v2": {addrs["v2"]}},
           "engines registered and healthy in their pools", deadline_s=30, every_s=0.2)
    for arm, version, other in (("v1", 1, 2), ("v2", 2, 1)):
        h = {"x-ab-group": arm}
        status, body = s.http("GET", f"http://{proxy}/v2/models/tiny-lm/versions/{version}/ready", headers=h)
        assert status == 200, f"arm {arm}: {status} {body[:200]!r}"
        status, _ = s.http("GET", f"http://{proxy}/v2/models/tiny-lm/versions/{other}/ready", headers=h)
        assert status != 200, f"arm {arm} reached a version-{other} engine"
    try:
        engines.stop_one("weir-engine-v2")
        s.poll(lambda: not etcd.keys("/weir/pools/engine-v2/members/"), "the v2 member leaving etcd", deadline_s=5)
        s.poll(lambda: members()["engine-v2"] == set(), "the gateway dropping the v2 member", deadline_s=5)
        assert members()["engine-v1"] == {addrs["v1"]}
    finally:
        engines.start("weir-engine-v2")


def test_a_restarted_gateway_serves_from_its_cache_while_etcd_is_down(rendered, tmp_path):
    """The Deployment's --etcd-cache at work: a gateway that starts while etcd
    is away serves the last config it applied (/readyz says so); without a
    cache it is alive (the startup and liveness probes pass) but not ready."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd not installed (scripts/deps.sh installs etcd-server)")
    docs = rendered["cpu"]
    etcd = s.Etcd()
    try:
        run = s.run_import_job(docs, tmp_path / "job", etcd.endpoint)
        assert run.returncode == 0, run.stderr
        args, cache = s.local_gateway_args(docs, tmp_path / "gateway", etcd.endpoint)
        proc, _proxy, admin = s.start_weir_args(args)
        try:
            s.poll(lambda: cache.is_file() and cache.stat().st_size > 0, "the etcd cache file")
        finally:
            proc.stop()
        etcd.stop()

        proc, _proxy, admin = s.start_weir_args(args)
        try:
            status, body = readyz(admin)
            assert status == 200 and body["source"] == "etcd-cache", body
            assert arm_weights(admin) == seeded_weights(docs)
        finally:
            proc.stop()

        cache.unlink()
        c = s.container(s.one(docs, "Deployment", "weir-gateway"), "weir")
        proc, _proxy, admin = s.start_weir_args(args, ready=False)
        try:
            for probe in ("startupProbe", "livenessProbe"):
                path = c[probe]["httpGet"]["path"]
                assert s.http("GET", f"http://{admin}{path}")[0] == 200, f"{probe} {path}"
            status, body = readyz(admin)
            assert status == 503 and not body["ready"], body
            # etcd back: it reads the config and turns ready.
            etcd.start()
            s.poll(lambda: readyz(admin)[0] == 200, "ready once etcd is back", deadline_s=30, every_s=0.2)
            assert readyz(admin)[1]["source"] == "etcd"
        finally:
            proc.stop()
    finally:
        etcd.close()


def pid1_wrapper() -> list[str]:
    """A command prefix that runs a program as process 1 of a new PID
    namespace, as every gateway is in its container (`unshare`, where this
    user may), else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    argv = [unshare, "--pid", "--fork", "--kill-child"]
    ok = subprocess.run([*argv, "sh", "-c", 'test "$$" = 1'], capture_output=True, timeout=10).returncode == 0
    return argv if ok else []


def start_gateway(args: list[str], wrapper: list[str], ready: bool = True) -> tuple[s.Proc, str]:
    proc = s.Proc([*wrapper, str(s.weir_bin()), *args], r"weir listening proxy=(\S+) admin=(\S+)",
                  env={"WEIR_LOG": "warn"})
    admin = proc.match.group(2)
    try:
        s.poll(lambda: s.get_200(f"http://{admin}/{'readyz' if ready else 'healthz'}"), "weir answering")
    except AssertionError:
        err = proc.stderr()
        stop_gateway(proc)
        raise AssertionError(f"weir {args}:\n{err}") from None
    return proc, admin


def stop_gateway(proc: s.Proc):
    """SIGINT to weir itself (under unshare, the wrapper's child), then the
    usual stop."""
    try:
        children = Path(f"/proc/{proc.p.pid}/task/{proc.p.pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(int(child), signal.SIGINT)
        except ProcessLookupError:
            pass
    if children:
        try:
            proc.p.wait(20)
        except subprocess.TimeoutExpired:
            pass
    proc.stop()


def test_replicas_share_one_cache_file_safely(with_components, tmp_path):
    """gateway-cache-pvc: three gateways with the Deployment's arguments
    write one cache file in one shared folder (the ReadWriteMany claim),
    each as process 1 as in its container where `unshare` is allowed.
    Through thirty weight changes, which every replica applies and writes
    within milliseconds of the others, a reader never finds a torn or
    invalid file, and no temporary file is left; then, with etcd down, a new
    gateway (a new pod) serves the last weights from that file."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd not installed (scripts/deps.sh installs etcd-server)")
    docs = with_components["cpu+gateway-cache-pvc"]
    dep = s.one(docs, "Deployment", "weir-gateway")
    cache_path = s.arg_value(s.container(dep, "weir")["args"], "--etcd-cache")
    claim = {v["name"]: v for v in s.pod_spec(dep)["volumes"]}["etcd-cache"]["persistentVolumeClaim"]
    assert s.one(docs, "PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"] == ["ReadWriteMany"]
    shared = tmp_path / "claim"
    shared.mkdir()
    cache = shared / cache_path.rsplit("/", 1)[1]
    wrapper = pid1_wrapper()
    etcd = s.Etcd()
    gateways: list[tuple[s.Proc, str]] = []
    try:
        run = s.run_import_job(docs, tmp_path / "job", etcd.endpoint)
        assert run.returncode == 0, run.stderr

        def args_for(name: str) -> list[str]:
            args, _own = s.local_gateway_args(docs, tmp_path / name, etcd.endpoint)
            return s.replace_arg(args, "--etcd-cache", str(cache))

        for i in range(3):
            gateways.append(start_gateway(args_for(f"replica-{i}"), wrapper))
        s.poll(lambda: cache.is_file(), "the shared cache file")

        bad: list[str] = []
        reads = [0]
        done = threading.Event()

        def reader():
            while not done.is_set():
                try:
                    text = cache.read_text()
                except FileNotFoundError:
                    bad.append("the cache file vanished")
                    continue
                try:
                    json.loads(text)
                    reads[0] += 1
                except ValueError:
                    bad.append(text[:200])

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            for n in range(1, 31):
                s.weirctl("--etcd", etcd.endpoint, "weights", "set", "chat", f"v1={100 - n}", f"v2={n}")
            final = {"v1": 70, "v2": 30}
            for _proc, admin in gateways:
                s.poll(lambda: arm_weights(admin) == final, "every replica applying the last change", deadline_s=10)
            time.sleep(0.5)
        finally:
            done.set()
            thread.join(5)
        assert not bad, bad[:3]
        assert reads[0] > 0
        assert sorted(p.name for p in shared.iterdir()) == [cache.name], "temporary files left behind"
        for proc, _admin in gateways:
            stop_gateway(proc)
        gateways.clear()
        etcd.stop()

        proc, admin = start_gateway(args_for("new-pod"), wrapper)
        gateways.append((proc, admin))
        status, body = readyz(admin)
        assert status == 200 and body["source"] == "etcd-cache", body
        assert arm_weights(admin) == final
    finally:
        for proc, _admin in gateways:
            stop_gateway(proc)
        etcd.close()


# ---------------------------------------------------------------- the import script's cases
# Each on its own prefix of the session's etcd (the Job's flags plus --prefix).


def test_import_waits_for_etcd_then_gives_up(rendered, tmp_path):
    run = s.run_import_job(rendered["cpu"], tmp_path, f"http://127.0.0.1:{s.free_port()}",
                           env={"WEIR_IMPORT_ATTEMPTS": "3", "WEIR_IMPORT_DELAY": "0"})
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("not reachable") == 3 and "giving up" in run.stderr, run.stderr


def test_import_keeps_members_registered_before_it(rendered, etcd, tmp_path):
    """Engines may register before the Job runs: members alone are no config,
    so the import happens, and keeps them."""
    prefix = "/deploy-test-early/"
    member = f"{prefix}pools/engine-v1/members/127.0.0.1:9"
    etcd.put(member, '{"address":"127.0.0.1:9","weight":1}')
    run = s.run_import_job(rendered["cpu"], tmp_path, etcd.endpoint, f"--prefix={prefix}")
    assert run.returncode == 0 and "weir-import-config: imported" in run.stderr, run.stderr
    assert etcd.get(member) is not None
    keys = etcd.keys(prefix)
    assert f"{prefix}routes/chat" in keys and f"{prefix}pools/engine-v2" in keys, keys
    out = s.weirctl("--etcd", etcd.endpoint, f"--prefix={prefix}", "config", "check")
    assert out.stdout.startswith("ok:"), out.stdout


def test_import_leaves_an_invalid_config_alone(rendered, etcd, tmp_path):
    """Something under the prefix that does not assemble is an operator's
    to look at: nothing is written, and the Job fails."""
    prefix = "/deploy-test-invalid/"
    etcd.put(f"{prefix}routes/chat", "{not json")
    run = s.run_import_job(rendered["cpu"], tmp_path, etcd.endpoint, f"--prefix={prefix}")
    assert run.returncode == 1 and "nothing imported" in run.stderr, run.stderr
    assert etcd.keys(prefix) == [f"{prefix}routes/chat"]
    assert etcd.get(f"{prefix}routes/chat") == "{not json"


def test_import_refuses_an_invalid_file(rendered, etcd, tmp_path):
    prefix = "/deploy-test-bad-file/"
    run = s.run_import_job(rendered["cpu"], tmp_path, etcd.endpoint, f"--prefix={prefix}",
                           file_text='[[routes]]\nname = "chat"\narms = [{ name = "v1", pool = "nope", weight = 1 }]\n')
    assert run.returncode != 0, run.stderr
    assert "nope" in run.stderr, run.stderr
    assert etcd.keys(prefix) == []
