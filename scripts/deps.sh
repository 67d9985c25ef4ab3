#!/usr/bin/env bash
# Install the system packages the build and the tests need, when missing.
# Debian/Ubuntu (apt); run as root or with sudo available. Idempotent.
#
#   cmake              Pingora's libz-ng-sys build
#   protobuf-compiler  protoc, for tonic/prost code generation
#   libprotobuf-dev    the well-known .proto files (google/protobuf/*.proto)
#                      that etcd-client's protos import
#   etcd-server/client a real etcd for the config-source tests
#   redis-server       a real Redis for the cluster-wide rate limit tests
#   prometheus         promtool: checks the binaries' /metrics pages and
#                      unit-tests the alert rules (deploy/prometheus/)
#   wasm32-unknown-unknown  the Rust target the Wasm filter guest is built for
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[[ -f /usr/include/google/protobuf/descriptor.proto ]] || need+=(libprotobuf-dev)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v redis-server >/dev/null || need+=(redis-server)   # cluster-wide rate limits (tests)
command -v python3 >/dev/null || need+=(python3 python3-venv python3-pip)
command -v unzip >/dev/null || need+=(unzip)
command -v openssl >/dev/null || need+=(openssl)   # test certificates for etcd over TLS
command -v promtool >/dev/null || need+=(prometheus)   # promtool: metrics pages and alert rules (deploy tests)

if ((${#need[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "deps: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "deps: adding the wasm32-unknown-unknown Rust target" >&2
    rustup target add wasm32-unknown-unknown >&2
fi
