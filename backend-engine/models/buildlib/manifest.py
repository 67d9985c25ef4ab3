"""Signed manifests (manifest.json) and the ed25519 keys that sign them.

The signed message is the UTF-8 text::

    weir-model-manifest/1
    model=<model>
    version=<version>
    <sha256 hex>  <path>        (one line per file, sorted by path)

covering every file of the version folder except manifest.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MANIFEST = "manifest.json"
MAGIC = "weir-model-manifest/1"
FORMAT = 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_files(vdir: Path) -> dict[str, str]:
    """sha256 of every file under ``vdir`` except manifest.json, by '/'-path."""
    files = {}
    for path in sorted(vdir.rglob("*")):
        rel = path.relative_to(vdir).as_posix()
        if path.is_file() and rel != MANIFEST:
            files[rel] = sha256_hex(path.read_bytes())
    return dict(sorted(files.items(), key=lambda kv: kv[0].encode("utf-8")))


def signed_message(model: str, version: str, files: dict[str, str]) -> bytes:
    text = f"{MAGIC}\nmodel={model}\nversion={version}\n"
    for path in sorted(files, key=lambda p: p.encode("utf-8")):
        text += f"{files[path]}  {path}\n"
    return text.encode("utf-8")


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_raw: bytes) -> str:
    return sha256_hex(public_raw)[:16]


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def read_private(path: Path) -> Ed25519PrivateKey:
    seed = bytes.fromhex(path.read_text().strip())
    if len(seed) != 32:
        raise SystemExit(f"{path}: expected 32 bytes of hex, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def write_private(path: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(seed.hex() + "\n")


def read_public(path: Path) -> bytes:
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) != 32:
        raise SystemExit(f"{path}: expected 32 bytes of hex, got {len(raw)}")
    return raw


def write_public(path: Path, public_raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(public_raw.hex() + "\n")


def sign(vdir: Path, model: str, version: str, key: Ed25519PrivateKey) -> None:
    """Write ``vdir/manifest.json`` covering the folder's current files."""
    files = version_files(vdir)
    signature = key.sign(signed_message(model, version, files))
    manifest = {
        "format": FORMAT,
        "model": model,
        "version": version,
        "files": files,
        "key_id": key_id(raw_public(key)),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    (vdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def verify(vdir: Path, model: str, version: str, public_raw: bytes) -> list[str]:
    """Everything wrong with ``vdir``'s manifest (empty when it verifies)."""
    where = f"{model}/{version}/{MANIFEST}"
    try:
        m = json.loads((vdir / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return [f"{where}: unreadable: {err}"]
    problems = []
    if m.get("format") != FORMAT:
        problems.append(f"{where}: format {m.get('format')!r}, want {FORMAT}")
    if m.get("model") != model or m.get("version") != version:
        problems.append(f"{where}: names {m.get('model')!r}/{m.get('version')!r}")
    actual = version_files(vdir)
    listed = m.get("files") if isinstance(m.get("files"), dict) else {}
    for path in sorted(set(actual) | set(listed)):
        if path not in listed:
            problems.append(f"{where}: {path} is not listed")
        elif path not in actual:
            problems.append(f"{where}: {path} is listed but missing")
        elif listed[path] != actual[path]:
            problems.append(f"{where}: {path} sha256 differs")
    if m.get("key_id") != key_id(public_raw):
        problems.append(f"{where}: key_id {m.get('key_id')!r} is not models.pub's {key_id(public_raw)}")
    try:
        signature = base64.b64decode(m.get("signature", ""), validate=True)
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, signed_message(model, version, listed))
    except (InvalidSignature, ValueError, TypeError):
        problems.append(f"{where}: signature does not verify against models.pub")
    return problems
