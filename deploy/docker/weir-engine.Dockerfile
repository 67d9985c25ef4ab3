# syntax=docker/dockerfile:1.7
# weir-engine on CPU.    docker build -f deploy/docker/weir-engine.Dockerfile -t weir-engine:0.1.0 .
#
# ONNX Runtime comes from the onnxruntime wheel on PyPI, unpacked by the same
# script the repository uses (scripts/setup-ort.sh). The image carries the
# shipped model repository and its public key in the layout weir-engine
# expects by default (/opt/weir/models/{repo,keys}).

FROM python:3.12.12-slim-bookworm AS ort
WORKDIR /src
COPY scripts/setup-ort.sh scripts/setup-ort.sh
RUN scripts/setup-ort.sh && test -f .ort/libonnxruntime.so.1.31.1

FROM rust:1.95.0-bookworm AS build
# protoc: the engine's gRPC code generation; cmake: other workspace crates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-engine \
 && install -D -m 0755 target/release/weir-engine /out/weir-engine

FROM debian:12.12-slim AS runtime
RUN groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin weir
COPY --from=build /out/weir-engine /usr/local/bin/weir-engine
COPY --from=ort /src/.ort/ /opt/weir/ort/
COPY backend-engine/models/repo /opt/weir/models/repo
COPY backend-engine/models/keys/models.pub /opt/weir/models/keys/models.pub
ENV ORT_DYLIB_PATH=/opt/weir/ort/libonnxruntime.so.1.31.1 \
    WEIR_ENGINE_MODELS=/opt/weir/models/repo \
    RUST_LOG=info,ort=warn
USER 10001:10001
# HTTP (OpenAI, Open Inference Protocol, /metrics), gRPC
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /v2/health/ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/weir-engine"]
CMD ["--http", "0.0.0.0:8000", "--grpc", "0.0.0.0:8001", "--device", "cpu"]
