"""The etcd-backed deployment, run for real against a local etcd: the import
Job's own command seeds it (once: running it again leaves an operator's
changes alone), the gateway runs with the Deployment's own arguments and
serves from etcd, the engines register in their pools with the manifests'
arguments and the gateway routes to them, and a gateway restarted while etcd
is down serves from its cache."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest

import support as s


def admin_routes(admin: str) -> dict:
    status, body = s.http("GET", f"http://{admin}/admin/routes")
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
