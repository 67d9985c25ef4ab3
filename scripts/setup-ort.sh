#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that weir-engine loads at run time.
#
#   scripts/setup-ort.sh          # CPU: .ort/libonnxruntime.so.1.31.1
#   scripts/setup-ort.sh --gpu    # CUDA: .ort-gpu/ (main lib + CUDA provider libs)
#
# The library comes from the onnxruntime (or onnxruntime-gpu) wheel on PyPI;
# nothing is downloaded from anywhere else. Idempotent: an existing library is
# kept. The last line printed is the library's absolute path, suitable for
# ORT_DYLIB_PATH or weir-engine --ort-lib.
set -euo pipefail

ORT_VERSION="1.31.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE="onnxruntime"
DEST="$ROOT/.ort"
if [[ "${1:-}" == "--gpu" ]]; then
    PACKAGE="onnxruntime-gpu"
    DEST="$ROOT/.ort-gpu"
elif [[ -n "${1:-}" ]]; then
    echo "usage: $0 [--gpu]" >&2
    exit 2
fi
LIB="$DEST/libonnxruntime.so.$ORT_VERSION"

if [[ -f "$LIB" ]]; then
    echo "$LIB"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "setup-ort: $PYTHON not found" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "setup-ort: fetching $PACKAGE==$ORT_VERSION from PyPI" >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$TMP" "$PACKAGE==$ORT_VERSION" >&2
WHEEL="$(ls "$TMP"/*.whl | head -n 1)"

mkdir -p "$DEST"
# A wheel is a zip; extract only the shared libraries that the engine needs.
"$PYTHON" - "$WHEEL" "$DEST" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
wanted = ("libonnxruntime.so", "libonnxruntime_providers_")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith("onnxruntime/capi/"):
            continue
        base = os.path.basename(name)
        if not base.startswith(wanted) or not ".so" in base:
            continue
        # TensorRT provider needs TensorRT itself; skip it to keep the folder small.
        if "tensorrt" in base:
            continue
        with z.open(info) as src, open(os.path.join(dest, base) + ".part", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(os.path.join(dest, base) + ".part", os.path.join(dest, base))
PY
[[ -f "$LIB" ]] || { echo "setup-ort: $LIB missing from the wheel" >&2; exit 1; }
echo "$LIB"
