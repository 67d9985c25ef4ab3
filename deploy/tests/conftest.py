"""Shared fixtures: rendered overlays, the binaries' --help, a local etcd,
running engines."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import support as s


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay rendered once: {"cpu": [...], "gpu": [...]}."""
    return {o: s.render(o) for o in s.OVERLAYS}


@pytest.fixture(scope="session")
def with_components() -> dict[str, list[dict]]:
    """Each overlay with every optional component ("cpu+all", "gpu+all"), and
    the cpu overlay with each one alone ("cpu+etcd-tls", ...)."""
    out = {f"{o}+all": s.render_with(o, *s.OPTIONAL_COMPONENTS) for o in s.OVERLAYS}
    for c in s.OPTIONAL_COMPONENTS:
        out[f"cpu+{c}"] = s.render_with("cpu", c)
    return out


@pytest.fixture(scope="session")
def weir_help() -> s.Help:
    return s.parse_help(s.weir_bin())


@pytest.fixture(scope="session")
def weirctl_help() -> s.Help:
    return s.parse_help(s.weirctl_bin())


@pytest.fixture(scope="session")
def etcd_server():
    """A local etcd for the whole session, or None when etcd is not installed
    (then the engines run without registering)."""
    if shutil.which("etcd") is None:
        yield None
        return
    e = s.Etcd()
    yield e
    e.close()


@pytest.fixture(scope="session")
def etcd(etcd_server) -> s.Etcd:
    if etcd_server is None:
        pytest.skip("etcd not installed (scripts/deps.sh installs etcd-server): etcd checks need it")
    return etcd_server


@pytest.fixture(scope="session")
def engine_help() -> s.Help:
    binary = s.engine_bin()
    if binary is None:
        pytest.skip("target/release/weir-engine not built: engine flag checks need it "
                    "(cargo build --release -p weir-engine)")
    return s.parse_help(binary)


def engine_mounts(docs: list[dict], deployment: dict, tmp: Path) -> dict[str, Path]:
    """Local stand-ins for the engine pod's volumes: mountPath -> folder.

    configMap volumes get the ConfigMap's data as files; emptyDirs are empty
    folders, shared by the init and main containers as in the pod.
    """
    spec = s.pod_spec(deployment)
    local: dict[str, Path] = {}
    for v in spec["volumes"]:
        d = tmp / v["name"]
        d.mkdir()
        if "configMap" in v:
            cm = s.one(docs, "ConfigMap", v["configMap"]["name"])
            for key, value in cm["data"].items():
                (d / key).write_text(value)
        local[v["name"]] = d
    mounts: dict[str, Path] = {}
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            mounts[m["mountPath"]] = local[m["name"]]
    return mounts


def image_paths(dockerfile: Path) -> dict[str, Path]:
    """Build-context COPYs of a Dockerfile's final stage: image path -> repo path."""
    final = s.stages(s.parse_dockerfile(dockerfile))[-1]
    out = {}
    for i in final:
        if i.op == "COPY":
            srcs, dest, frm = s.copy_sources(i)
            if frm is None and len(srcs) == 1:
                out[dest.rstrip("/")] = s.ROOT / srcs[0]
    return out


def remap(text: str, paths: dict[str, Path]) -> str:
    """Replaces whole-path prefixes by their local folders, in one pass
    (longest prefix first, so /opt/weir/models/repo wins over /models)."""
    if not paths:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    rx = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|\s|$|')")
    return rx.sub(lambda m: str(paths[m.group(1)]), text)


# weir-engine's registration flags (all of them need --register-etcd).
REGISTER_FLAGS = ("--register-etcd", "--pool", "--advertise", "--register-weight", "--register-ttl",
                  "--register-prefix", "--register-cacert", "--register-cert", "--register-key",
                  "--register-tls-domain", "--register-user")


class Engines:
    """The engine Deployments of the cpu overlay, each run as a real weir-engine
    with the manifest's own arguments: volumes become temp folders, the init
    container's command fills the model volume, listeners move to 127.0.0.1:0.
    With a local etcd the engine registers there in the manifest's `--pool`
    as the address it is bound to (the manifest's `--advertise` names the
    pod IP); without one it does not register."""

    def __init__(self, docs: list[dict], etcd: s.Etcd | None, paths: dict[str, Path] | None = None):
        self.procs: dict[str, tuple[s.Proc, str]] = {}
        self.docs = docs
        self.etcd = etcd
        # Local stand-ins for mounted folders the tests fill themselves
        # (e.g. a Secret's certificates), over the empty ones of engine_mounts.
        self.paths = paths or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="deploy-engines-"))

    def start(self, name: str, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> str:
        """Starts the Deployment `name`'s engine (without the flags `drop`,
        with the arguments `extra` after its own); returns its HTTP address."""
        if name in self.procs:
            return self.procs[name][1]
        dep = s.one(self.docs, "Deployment", name)
        tmp = self.tmp / name
        tmp.mkdir()
        mounts = {**engine_mounts(self.docs, dep, tmp), **self.paths}
        paths = {**image_paths(s.DOCKER / "weir-engine.Dockerfile"), **mounts}
        for init in s.pod_spec(dep).get("initContainers", []):
            cmd = [remap(a, paths) for a in init["command"] + init.get("args", [])]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, f"{name} init container {init['name']} {cmd}: {out.stderr}"
        c = s.container(dep, "engine")
        args = s.drop_args([remap(a, paths) for a in [*c["args"], *extra]], *drop)
        args = s.replace_arg(args, "--http", "127.0.0.1:0")
        args = s.replace_arg(args, "--grpc", "127.0.0.1:0")
        if self.etcd is not None and s.arg_value(args, "--register-etcd"):
            args = s.replace_arg(args, "--register-etcd", self.etcd.endpoint)
            args = s.drop_args(args, "--advertise")
        else:
            args = s.drop_args(args, *REGISTER_FLAGS)
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        lib = s.ort_lib()
        if lib:
            env["ORT_DYLIB_PATH"] = lib
        proc, addr = s.start_engine(args, env)
        self.procs[name] = (proc, addr)
        return addr

    def stop_one(self, name: str):
        """Stops one engine (SIGINT, as a clean shutdown); `start` runs it again."""
        if name in self.procs:
            self.procs.pop(name)[0].stop()
            shutil.rmtree(self.tmp / name, ignore_errors=True)

    def stop(self):
        for proc, _ in self.procs.values():
            proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def engines(rendered, etcd_server):
    if s.engine_bin() is None:
        pytest.skip("target/release/weir-engine not built: engine launch checks need it")
    if s.ort_lib() is None:
        pytest.skip("no ONNX Runtime library (scripts/setup-ort.sh; scripts/test-deploy runs it)")
    e = Engines(rendered["cpu"], etcd_server)
    yield e
    e.stop()
