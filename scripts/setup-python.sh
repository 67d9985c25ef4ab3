#!/usr/bin/env bash
# Create (if missing) the repository's Python virtual environment at .venv and
# install scripts/requirements.txt into it. Idempotent: an existing .venv is
# reused and pip skips what is already installed at the pinned version.
# The last line printed is the venv's absolute path; its interpreter is
# "<path>/bin/python".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/scripts/requirements.txt"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null || { echo "setup-python: $PYTHON not found" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-python: creating $VENV" >&2
    if ! "$PYTHON" -m venv "$VENV" >&2; then
        # Debian ships venv (ensurepip) separately.
        if command -v apt-get >/dev/null; then
            echo "setup-python: installing python3-venv" >&2
            apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV" >&2
        else
            exit 1
        fi
    fi
fi

# Skip pip entirely when the requirements file has not changed since the last
# successful install (pip's own no-op check still costs a few seconds).
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" >&2
    echo "$WANT" >"$STAMP"
fi

echo "$VENV"
