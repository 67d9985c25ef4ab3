# syntax=docker/dockerfile:1.7
# weirctl, the operator CLI for the etcd keys.
#   docker build -f deploy/docker/weirctl.Dockerfile -t weirctl:0.1.0 .
#   docker run --rm weirctl:0.1.0 --etcd http://etcd:2379 weights get chat
# It also carries weir-import-config, the Kubernetes Job weir-config-import's
# command (seed etcd from a file, only while etcd holds no config).
# `--bin weirctl` finds the binary in whichever workspace crate defines it.

FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin weirctl \
 && install -D -m 0755 target/release/weirctl /out/weirctl

FROM debian:12.12-slim AS runtime
RUN groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin weir
COPY --from=build /out/weirctl /usr/local/bin/weirctl
COPY --chmod=0755 deploy/docker/weir-import-config /usr/local/bin/weir-import-config
USER 10001:10001
# A one-shot command, not a service: nothing to check.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/weirctl"]
CMD ["--help"]
