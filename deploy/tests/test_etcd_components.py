"""The etcd components run for real against a local etcd: the backup
CronJob's commands save a snapshot that the rotation keeps (and that restores
into a working etcd holding the config), the defrag CronJob's commands
defragment, and with components/etcd-tls etcd serves TLS with client
certificates while the import Job, the gateway, the backup and (when built)
the engines work with the component's own arguments, and weirctl reaches it
through a port-forward's 127.0.0.1 with --tls-domain.

The local etcd is Debian's (3.4): its etcdctl takes the same flags and
environment as the image's; `etcdutl` (3.5) is stood in for by
`etcdctl snapshot status|restore` where it is missing."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import types
from pathlib import Path

import pytest
import yaml

import support as s

ETCDCTL = shutil.which("etcdctl")


@pytest.fixture(scope="module")
def etcd_tools():
    if shutil.which("etcd") is None or ETCDCTL is None:
        pytest.skip("etcd/etcdctl not installed (scripts/deps.sh installs etcd-server and etcd-client)")


def container_env(c: dict, pod_name: str, **override: str) -> dict[str, str]:
    """A container's environment as the kubelet gives it (POD_NAME from the
    downward API), with `override`."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
    env.update(override)
    return env


def run_container(c: dict, env: dict[str, str], paths: dict[str, Path], binaries: dict[str, str] | None = None,
                  drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Runs a container's command and args locally: $(VAR) expanded from its
    env, mounted folders at `paths`, `binaries` replacing the image's."""
    argv = [s.remap_paths(s.kube_expand(a, env), paths) for a in c["command"] + c.get("args", [])]
    argv = [a for a in argv if a.partition("=")[0] not in drop]
    argv[0] = (binaries or {}).get(argv[0], argv[0])
    local_env = {k: s.remap_paths(v, paths) for k, v in env.items()}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], **local_env})


def etcdutl_or_etcdctl() -> str:
    return shutil.which("etcdutl") or ETCDCTL


# ---------------------------------------------------------------- backup, rotation, restore


def test_backup_rotation_and_restore(rendered, etcd_tools, tmp_path):
    """The CronJob weir-etcd-backup's three steps, each with its own command,
    on a local etcd: a snapshot, its check, the rotation keeping the newest
    KEEP_SNAPSHOTS. Then restore-member.yaml's two steps bring the snapshot
    back into a data folder an etcd starts from, config included."""
    docs = rendered["cpu"]
    cj = s.one(docs, "CronJob", "weir-etcd-backup")
    spec = s.pod_spec(cj)
    snapshot, verify = spec["initContainers"]
    (rotate,) = spec["containers"]
    backup = tmp_path / "backup"
    backup.mkdir()
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    script_path = rotate["command"][1]
    (scripts / script_path.rsplit("/", 1)[1]).write_text(s.configmap_file(docs, cj, rotate, script_path))
    paths = {"/backup": backup, script_path.rsplit("/", 1)[0]: scripts}
    # Older snapshots of earlier runs, and a leftover of a failed one.
    old = [backup / f"weir-etcd-2020010{d}T001700Z.db" for d in range(1, 6)]
    for f in old:
        f.write_text("old")
    stale = backup / ".incoming-weir-etcd-backup-1-abcde.db.part"
    stale.write_text("partial")
    two_days_ago = datetime.datetime.now().timestamp() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))

    etcd = s.Etcd()
    try:
        etcd.put("/weir/routes/chat", '{"arms":[]}')
        pod = "weir-etcd-backup-29000000-x1y2z"
        run = run_container(snapshot, container_env(snapshot, pod, ETCDCTL_ENDPOINTS=etcd.endpoint), paths)
        assert run.returncode == 0, run.stderr
        incoming = backup / f".incoming-{pod}.db"
        assert incoming.is_file() and incoming.stat().st_size > 0
        tool = etcdutl_or_etcdctl()
        run = run_container(verify, container_env(verify, pod), paths, {"etcdutl": tool})
        assert run.returncode == 0, run.stderr
        run = run_container(rotate, container_env(rotate, pod, KEEP_SNAPSHOTS="3"), paths)
        assert run.returncode == 0, run.stderr
    finally:
        etcd.close()
    kept = sorted(f.name for f in backup.iterdir())
    assert len(kept) == 3, kept
    assert kept[:2] == [old[-2].name, old[-1].name], kept
    assert kept[2].startswith("weir-etcd-2") and kept[2] not in {f.name for f in old}
    assert not incoming.exists() and not stale.exists()
    snap = backup / kept[2]

    # Control: without a new snapshot nothing is deleted.
    run = run_container(rotate, container_env(rotate, "other-pod", KEEP_SNAPSHOTS="1"), paths)
    assert run.returncode == 1 and "no snapshot" in run.stderr, run.stderr
    assert sorted(f.name for f in backup.iterdir()) == kept
    run = run_container(rotate, container_env(rotate, pod, KEEP_SNAPSHOTS="x"), paths)
    assert run.returncode == 2, run.stderr

    # Restore, member 0, as restore-member.yaml does it (a one-member cluster
    # here, so that a local etcd can start from the result).
    text = (s.K8S / "components" / "etcd-maintenance" / "restore-member.yaml").read_text()
    restore_pod = yaml.safe_load(text.replace("@MEMBER@", "0").replace("@SNAPSHOT@", snap.name))
    (aside,) = restore_pod["spec"]["initContainers"]
    (restore,) = restore_pod["spec"]["containers"]
    data = tmp_path / "member"
    (data / "data").mkdir(parents=True)
    (data / "data" / "old").write_text("before")
    rpaths = {"/var/lib/etcd": data, "/backup": backup}
    run = run_container(aside, container_env(aside, "restore"), rpaths)
    assert run.returncode == 0, run.stderr
    assert not (data / "data").exists()
    assert [p.name.startswith("data.before-restore-") for p in data.iterdir()] == [True]

    peer = f"http://127.0.0.1:{s.free_port()}"
    tool = etcdutl_or_etcdctl()
    help_text = subprocess.run([tool, "snapshot", "restore", "--help"], capture_output=True, text=True).stdout
    drop = tuple(f for f in ("--bump-revision", "--mark-compacted") if f not in help_text)
    args = s.replace_arg(restore["args"], "--initial-cluster", f"weir-etcd-0={peer}")
    args = s.replace_arg(args, "--initial-advertise-peer-urls", peer)
    run = run_container({**restore, "args": args}, {"POD_NAMESPACE": "weir"}, rpaths, {"etcdutl": tool}, drop=drop)
    assert run.returncode == 0, run.stdout + run.stderr
    client = f"http://127.0.0.1:{s.free_port()}"
    proc = subprocess.Popen([shutil.which("etcd"), "--name", "weir-etcd-0", "--data-dir", str(data / "data"),
                             "--listen-client-urls", client, "--advertise-client-urls", client,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"weir-etcd-0={peer}", "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = s.poll(lambda: subprocess.run([ETCDCTL, f"--endpoints={client}", "get", "/weir/routes/chat",
                                             "--print-value-only"], capture_output=True, text=True).stdout.strip(),
                     "the restored etcd answering", deadline_s=30, every_s=0.2)
        assert got == '{"arms":[]}'
    finally:
        proc.terminate()
        proc.wait(20)


def test_defrag_commands(rendered, etcd_tools):
    """Each defrag step (one member at a time) and the alarm listing succeed
    against a live etcd; control: an unreachable member fails the step."""
    cj = s.one(rendered["cpu"], "CronJob", "weir-etcd-defrag")
    spec = s.pod_spec(cj)
    etcd = s.Etcd()
    try:
        for c in spec["initContainers"] + spec["containers"]:
            run = run_container(c, container_env(c, "defrag", ETCDCTL_ENDPOINTS=etcd.endpoint), {})
            assert run.returncode == 0, (c["name"], run.stderr)
        c = spec["initContainers"][0]
        dead = f"http://127.0.0.1:{s.free_port()}"
        run = run_container(c, container_env(c, "defrag", ETCDCTL_ENDPOINTS=dead, ETCDCTL_DIAL_TIMEOUT="1s",
                                             ETCDCTL_COMMAND_TIMEOUT="2s"), {})
        assert run.returncode != 0
    finally:
        etcd.close()


# ---------------------------------------------------------------- TLS


def make_certificates(folder: Path, dns_names: tuple[str, ...] = ("localhost",),
                      ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """ca.crt, tls.crt (serverAuth + clientAuth, for `dns_names` and `ips`),
    tls.key: the Secret weir-etcd-tls's keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir-etcd-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir-etcd")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


def etcdctl_tls(certs: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    """etcdctl against a TLS etcd with the CA and the client certificate."""
    return subprocess.run([ETCDCTL, f"--endpoints={endpoint}", f"--cacert={certs / 'ca.crt'}",
                           f"--cert={certs / 'tls.crt'}", f"--key={certs / 'tls.key'}",
                           "--dial-timeout=2s", "--command-timeout=3s", *args],
                          capture_output=True, text=True, timeout=30)


class TlsEtcd:
    """A one-member etcd started with the etcd-tls component's client flags:
    its client listener (the one the StatefulSet names) on 127.0.0.1, its
    certificate files from `certs`."""

    def __init__(self, docs: list[dict], certs: Path, tmp: Path):
        sts = s.one(docs, "StatefulSet", "weir-etcd")
        args = s.container(sts, "etcd")["args"]
        (listen,) = s.arg_value(args, "--listen-client-urls").split(",")
        scheme, hostport = listen.split("://")
        assert (scheme, hostport) == ("https", "0.0.0.0:2379"), listen
        self.tls = f"https://127.0.0.1:{s.free_port()}"
        flags = [s.remap_paths(a, {"/etc/etcd/tls": certs}) for a in args
                 if a.partition("=")[0] in ("--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth")]
        assert len(flags) == 4, args
        self.certs = certs
        peer = f"http://127.0.0.1:{s.free_port()}"
        self.log = open(tmp / "etcd.log", "wb")
        self.p = subprocess.Popen(
            [shutil.which("etcd"), "--name", "tls-test", "--data-dir", str(tmp / "data"),
             "--listen-client-urls", self.tls, "--advertise-client-urls", self.tls,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"tls-test={peer}", "--log-level", "warn", *flags],
            stdout=self.log, stderr=self.log)
        # (The certificate need not name 127.0.0.1: the readiness check alone
        # skips the name check.)
        s.poll(lambda: etcdctl_tls(certs, self.tls, "--insecure-skip-tls-verify", "endpoint", "health")
               .returncode == 0, "etcd endpoint health (TLS, client certificate)", deadline_s=30, every_s=0.2)

    def keys(self, prefix: str) -> set[str]:
        out = etcdctl_tls(self.certs, self.tls, "get", "--prefix", "--keys-only", prefix)
        assert out.returncode == 0, out.stderr
        return {k for k in out.stdout.split() if k}

    def stop(self):
        self.p.terminate()
        self.p.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def tls_setup(with_components, etcd_tools, tmp_path_factory):
    docs = with_components["cpu+etcd-tls"]
    tmp = tmp_path_factory.mktemp("etcd-tls")
    certs = tmp / "tls"
    make_certificates(certs)
    etcd = TlsEtcd(docs, certs, tmp)
    yield types.SimpleNamespace(docs=docs, tmp=tmp, certs=certs, etcd=etcd, paths={"/etc/etcd/tls": certs})
    etcd.stop()


def test_etcd_tls_import_job_and_client_certificates(tls_setup):
    """The import Job's own flags (https, --cacert, --cert, --key) seed the
    TLS etcd; without the client certificate, or without TLS, weirctl is
    refused."""
    t = tls_setup
    run = s.run_import_job(t.docs, t.tmp / "job", t.etcd.tls, paths=t.paths)
    assert run.returncode == 0, run.stderr
    assert "weir-import-config: imported" in run.stderr, run.stderr
    ca = str(t.certs / "ca.crt")
    out = s.weirctl("--etcd", t.etcd.tls, "--cacert", ca, "--cert", str(t.certs / "tls.crt"),
                    "--key", str(t.certs / "tls.key"), "--json", "weights", "get", "chat")
    assert json.loads(out.stdout)["weights"], out.stdout
    # Controls: the CA alone (no client certificate) and plain HTTP on the TLS port fail.
    for flags in (["--etcd", t.etcd.tls, "--cacert", ca], ["--etcd", t.etcd.tls.replace("https://", "http://")]):
        out = subprocess.run([str(s.weirctl_bin()), *flags, "--json", "weights", "get", "chat"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, (flags, out.stdout)


def test_etcd_tls_gateway_and_engines(tls_setup, tmp_path):
    """The gateway with the component's weir.toml ([source.etcd] tls) and
    arguments serves the config from the TLS etcd; the engines, started with
    the component's own arguments (https --register-etcd, --register-cacert,
    --register-cert, --register-key, the Secret's files), join their pools
    there over TLS and leave on a clean stop (when weir-engine is built).
    Control: an engine without its client certificate is refused and exits."""
    t = tls_setup
    run = s.run_import_job(t.docs, t.tmp / "job-gw", t.etcd.tls, paths=t.paths)
    assert run.returncode == 0, run.stderr
    args, _cache = s.local_gateway_args(t.docs, tmp_path / "gateway", t.etcd.tls, paths=t.paths)
    proc, _proxy, admin = s.start_weir_args(args)
    try:
        status, body = s.http("GET", f"http://{admin}/readyz")
        assert status == 200 and json.loads(body)["source"] == "etcd", body
        if s.engine_bin() is None or s.ort_lib() is None:
            pytest.skip("target/release/weir-engine (and ONNX Runtime) needed for the engine half")
        from conftest import Engines
        for name in ("weir-engine-v1", "weir-engine-v2"):
            ec = s.container(s.one(t.docs, "Deployment", name), "engine")
            assert s.arg_value(ec["args"], "--register-etcd").startswith("https://"), name
            assert s.arg_value(ec["args"], "--register-cert"), name
        engines = Engines(t.docs, types.SimpleNamespace(endpoint=t.etcd.tls), paths=t.paths)
        try:
            addrs = {v: engines.start(f"weir-engine-{v}") for v in ("v1", "v2")}

            def members():
                status, body = s.http("GET", f"http://{admin}/admin/routes", headers=s.ADMIN_HEADERS)
                pools = {p["name"]: {b["address"] for b in p["backends"]} for p in json.loads(body)["pools"]}
                return pools
            s.poll(lambda: all(members().get(f"engine-{v}") == {a} for v, a in addrs.items()),
                   "both engines registered over TLS", deadline_s=30, every_s=0.2)
            assert {f"/weir/pools/engine-{v}/members/{a}" for v, a in addrs.items()} <= t.etcd.keys("/weir/pools/")
            engines.stop_one("weir-engine-v2")
            s.poll(lambda: not members().get("engine-v2"), "the stopped engine leaving its pool",
                   deadline_s=30, every_s=0.2)
            assert not t.etcd.keys("/weir/pools/engine-v2/")
            # Control: the same engine without its client certificate.
            with pytest.raises(AssertionError, match="configuration: --register-etcd: "):
                engines.start("weir-engine-v2", drop=("--register-cert", "--register-key"))
            assert members().get("engine-v2") in (None, set())
        finally:
            engines.stop()
    finally:
        proc.stop()


def test_weirctl_through_a_port_forward_with_tls_domain(with_components, etcd_tools, tmp_path):
    """deploy/README.md's weirctl through `kubectl port-forward`: the
    certificate names only the in-cluster hosts (certificate.example.yaml's
    DNS names), the URL is https://127.0.0.1:PORT, and --tls-domain with a
    member's name makes weirctl verify that name; without it the name check
    fails."""
    docs = with_components["cpu+etcd-tls"]
    example = yaml.safe_load((s.K8S / "components" / "etcd-tls" / "certificate.example.yaml").read_text())
    certs = tmp_path / "tls"
    make_certificates(certs, dns_names=tuple(example["spec"]["dnsNames"]), ips=())
    etcd = TlsEtcd(docs, certs, tmp_path)
    try:
        readme = (s.DEPLOY / "README.md").read_text()
        assert "--tls-domain weir-etcd-0.weir-etcd" in readme
        tls = ["--cacert", str(certs / "ca.crt"), "--cert", str(certs / "tls.crt"), "--key", str(certs / "tls.key")]
        routes = s.by_prefix(docs, "ConfigMap", "weir-routes")["data"]["routes.toml"]
        (tmp_path / "routes.toml").write_text(routes)
        s.weirctl("--etcd", etcd.tls, *tls, "--tls-domain", "weir-etcd-0.weir-etcd", "config", "import",
                  str(tmp_path / "routes.toml"))
        out = s.weirctl("--etcd", etcd.tls, *tls, "--tls-domain", "weir-etcd-0.weir-etcd", "--json",
                        "weights", "get", "chat")
        assert json.loads(out.stdout)["weights"], out.stdout
        out = s.weirctl("--etcd", etcd.tls, *tls, "--json", "weights", "get", "chat", check=False)
        assert out.returncode != 0, out.stdout
    finally:
        etcd.stop()


def test_etcd_tls_gateway_without_the_certificates_stays_unready(tls_setup, rendered, tmp_path):
    """Control: the base's gateway (no [source.etcd] tls, so neither the CA
    nor a client certificate) pointed at the TLS listener gets no config."""
    t = tls_setup
    args, _ = s.local_gateway_args(rendered["cpu"], tmp_path / "gw", t.etcd.tls)
    proc, _proxy, admin = s.start_weir_args(args, ready=False)
    try:
        for _ in range(15):
            assert s.http("GET", f"http://{admin}/readyz")[0] == 503
            time.sleep(0.2)
    finally:
        proc.stop()


def test_etcd_tls_backup_uses_the_certificates(tls_setup, tmp_path):
    """The backup's snapshot step with the component's ETCDCTL_* settings
    saves a snapshot from the TLS listener."""
    t = tls_setup
    cj = s.one(t.docs, "CronJob", "weir-etcd-backup")
    snapshot = s.pod_spec(cj)["initContainers"][0]
    backup = tmp_path / "backup"
    backup.mkdir()
    env = container_env(snapshot, "pod", ETCDCTL_ENDPOINTS=t.etcd.tls)
    assert env["ETCDCTL_CACERT"].startswith("/etc/etcd/tls/")
    run = run_container(snapshot, env, {"/backup": backup, **t.paths})
    assert run.returncode == 0, run.stderr
    assert (backup / ".incoming-pod.db").stat().st_size > 0
    # Control: without the client certificate the TLS listener refuses.
    env = {k: v for k, v in env.items() if k not in ("ETCDCTL_CERT", "ETCDCTL_KEY")}
    env.update(ETCDCTL_DIAL_TIMEOUT="2s", ETCDCTL_COMMAND_TIMEOUT="3s")
    run = run_container({**snapshot, "args": ["snapshot", "save", "/backup/other.db"]}, env,
                        {"/backup": backup, **t.paths})
    assert run.returncode != 0


# ---------------------------------------------------------------- users and passwords


def readme_auth_commands() -> list[str]:
    """The etcdctl lines of deploy/README.md's "Users and passwords" block
    (those starting with $ETCDCTL), in order."""
    readme = (s.DEPLOY / "README.md").read_text()
    section = readme[readme.index("#### Users and passwords"):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    lines = [ln for ln in block.splitlines() if ln.startswith("$ETCDCTL ")]
    assert lines and lines[-1] == "$ETCDCTL auth enable", lines
    return lines


def test_etcd_password_auth_as_documented(rendered, etcd_tools, tmp_path):
    """deploy/README.md's users and passwords, on a local etcd: its etcdctl
    commands set up the users and the role; then the import Job (with
    WEIRCTL_USER), the gateway ([source.etcd] username and a password read
    from the Secret's file) and an engine (--register-user with
    ${file:...}) work as the user `weir`, and the backup's snapshot as root.
    Controls: no password, a wrong one, the backup as `weir`."""
    docs = rendered["cpu"]
    etcd = s.Etcd()
    passwords = {"ROOT_PASSWORD": "r00t-pw-for-a-test", "WEIR_PASSWORD": "weir-pw-for-a-test"}
    try:
        script = "\n".join(ln.replace("$ETCDCTL", f"{ETCDCTL} --endpoints={etcd.endpoint}", 1)
                           for ln in readme_auth_commands())
        run = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ["PATH"], **passwords})
        assert run.returncode == 0, run.stdout + run.stderr
        weir_user = "weir:" + passwords["WEIR_PASSWORD"]
        # The Secret weir-etcd-auth, as mounted: the key `password` (a trailing newline, as files often have).
        secret = tmp_path / "etcd-auth"
        secret.mkdir()
        (secret / "password").write_text(passwords["WEIR_PASSWORD"] + "\n")
        paths = {"/etc/weir/etcd": secret}

        # Control: without the user etcd refuses weirctl.
        out = s.weirctl("--etcd", etcd.endpoint, "--json", "config", "export", check=False)
        assert out.returncode != 0 and "user name is empty" in out.stdout + out.stderr, out.stdout + out.stderr
        run = s.run_import_job(docs, tmp_path / "job", etcd.endpoint, env={"WEIRCTL_USER": weir_user})
        assert run.returncode == 0 and "weir-import-config: imported" in run.stderr, run.stderr

        def gateway(name: str, password: str):
            args, _ = s.local_gateway_args(docs, tmp_path / name, etcd.endpoint)
            config = Path(s.arg_value(args, "--config"))
            config.write_text(config.read_text() + "\n[source.etcd]\n"
                              f"endpoints = [\"{etcd.endpoint}\"]\nusername = \"weir\"\n"
                              + s.remap_paths(f"password = \"{password}\"\n", paths))
            return args

        readme = (s.DEPLOY / "README.md").read_text()
        documented = '${file:/etc/weir/etcd/password}'
        assert f'password = "{documented}"' in readme and f"--register-user=weir:{documented}" in readme
        proc, _proxy, admin = s.start_weir_args(gateway("gateway", documented))
        try:
            status, body = s.http("GET", f"http://{admin}/readyz")
            assert status == 200 and json.loads(body)["source"] == "etcd", body
            # Control: a wrong password gets no config.
            bad, _p, bad_admin = s.start_weir_args(gateway("wrong", "not-the-password"), ready=False)
            try:
                for _ in range(10):
                    assert s.http("GET", f"http://{bad_admin}/readyz")[0] == 503
                    time.sleep(0.2)
            finally:
                bad.stop()
            if s.engine_bin() is not None and s.ort_lib() is not None:
                from conftest import Engines
                engines = Engines(docs, etcd, paths=paths)
                try:
                    addr = engines.start("weir-engine-v1", extra=(f"--register-user=weir:{documented}",))

                    def registered():
                        _status, body = s.http("GET", f"http://{admin}/admin/routes", headers=s.ADMIN_HEADERS)
                        pools = {p["name"]: {b["address"] for b in p["backends"]} for p in json.loads(body)["pools"]}
                        return pools.get("engine-v1") == {addr}
                    s.poll(registered, "the engine registered as the user weir", deadline_s=30, every_s=0.2)
                finally:
                    engines.stop()
        finally:
            proc.stop()

        # The backup's snapshot step: as root (an admin operation), not as weir.
        cj = s.one(docs, "CronJob", "weir-etcd-backup")
        snapshot = s.pod_spec(cj)["initContainers"][0]
        backup = tmp_path / "backup"
        backup.mkdir()
        for user, password, ok in (("root", passwords["ROOT_PASSWORD"], True),
                                   ("weir", passwords["WEIR_PASSWORD"], False)):
            env = container_env(snapshot, f"pod-{user}", ETCDCTL_ENDPOINTS=etcd.endpoint, ETCDCTL_USER=user,
                                ETCDCTL_PASSWORD=password)
            run = run_container(snapshot, env, {"/backup": backup})
            assert (run.returncode == 0) == ok, (user, run.stderr)
    finally:
        etcd.close()


def test_digest_file_matches_what_the_readme_tells_operators(tmp_path):
    """deploy/README.md's command for token.sha256 (`printf %s "$T" |
    sha256sum | cut -d' ' -f1`) gives the digest the gateway compares
    against (hex SHA-256 of the token, no newline)."""
    readme = (s.DEPLOY / "README.md").read_text()
    assert "printf %s \"$T\" | sha256sum | cut -d' ' -f1" in readme
    token = "t0k3n-for-a-check"
    out = subprocess.run(["sh", "-c", "printf %s \"$T\" | sha256sum | cut -d' ' -f1"], env={**os.environ, "T": token},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()
