# syntax=docker/dockerfile:1.7
# weir-engine on CUDA.    docker build -f deploy/docker/weir-engine-gpu.Dockerfile -t weir-engine-gpu:0.1.0 .
#
# onnxruntime-gpu 1.31.1 is built against CUDA 13 and cuDNN 9: the runtime base
# is NVIDIA's CUDA 13 runtime image with cuDNN (libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcudnn*.so.9 on the loader path). The provider libraries
# (libonnxruntime_providers_cuda.so, _shared.so) must stay beside the main
# library: scripts/setup-ort.sh --gpu unpacks all three into one folder.
# The engine is built on Debian 12 (glibc 2.36); Ubuntu 24.04 has glibc 2.39.

FROM python:3.12.12-slim-bookworm AS ort
WORKDIR /src
COPY scripts/setup-ort.sh scripts/setup-ort.sh
RUN scripts/setup-ort.sh --gpu \
 && test -f .ort-gpu/libonnxruntime.so.1.31.1 \
 && test -f .ort-gpu/libonnxruntime_providers_cuda.so \
 && test -f .ort-gpu/libonnxruntime_providers_shared.so

FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-engine \
 && install -D -m 0755 target/release/weir-engine /out/weir-engine

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS runtime
RUN groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin weir
COPY --from=build /out/weir-engine /usr/local/bin/weir-engine
COPY --from=ort /src/.ort-gpu/ /opt/weir/ort/
COPY backend-engine/models/repo /opt/weir/models/repo
COPY backend-engine/models/keys/models.pub /opt/weir/models/keys/models.pub
ENV ORT_DYLIB_PATH=/opt/weir/ort/libonnxruntime.so.1.31.1 \
    WEIR_ENGINE_MODELS=/opt/weir/models/repo \
    RUST_LOG=info,ort=warn \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /v2/health/ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/weir-engine"]
# --device cuda fails at start, with a clear error, when CUDA cannot be used.
CMD ["--http", "0.0.0.0:8000", "--grpc", "0.0.0.0:8001", "--device", "cuda"]
