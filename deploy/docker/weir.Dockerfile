# syntax=docker/dockerfile:1.7
# weir, the gateway.    docker build -f deploy/docker/weir.Dockerfile -t weir:0.1.0 .
#
# Build on Debian 12 (glibc 2.36) and run on Debian 12 slim: the binary links
# glibc dynamically, so the runtime's glibc must not be older than the builder's.
# A gateway run from a file may name Services directly (address =
# "weir-engine-v1.weir.svc.cluster.local:8000": weir resolves names itself);
# the Kubernetes manifests run it from etcd, where engines register their IPs.

FROM rust:1.95.0-bookworm AS build
# cmake: Pingora's libz-ng-sys; protoc: tonic/prost code generation in the workspace.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
# The Wasm filter guest (filters/) is built by a build script for wasm32.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-gateway \
 && install -D -m 0755 target/release/weir /out/weir

FROM debian:12.12-slim AS runtime
RUN groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin weir
COPY --from=build /out/weir /usr/local/bin/weir
# The default config: the quickstart's split (engines on 127.0.0.1:9001/9002,
# so `docker run --network host`), listening on every interface. Mount your
# own file over it or set WEIR_CONFIG.
COPY deploy/docker/weir.toml /etc/weir/weir.toml
ENV WEIR_CONFIG=/etc/weir/weir.toml \
    WEIR_LOG=info
USER 10001:10001
# proxy, admin (as in /etc/weir/weir.toml)
EXPOSE 8080 9090
# No curl in the image: bash's /dev/tcp asks the admin listener's /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/weir"]
