# syntax=docker/dockerfile:1
#
# Kiroku: one image for every role (`kiroku serve gateway|worker|account|audit`).
#
#   docker build -t kiroku:0.1.0 .                                  # CPU (default)
#   docker build --build-arg VARIANT=cuda -t kiroku:0.1.0-cuda .    # GPU workers
#
# VARIANT=cuda builds `kiroku-cli` with its cargo feature `cuda` (which enables
# `kiroku-engine/cuda` -> `whisper-rs/cuda`: whisper.cpp with CUDA/cuBLAS) on NVIDIA's
# devel image and runs it on NVIDIA's runtime image (cuBLAS, cudart); the driver's
# libcuda comes from the node through the NVIDIA container toolkit. Set CUDA_ARCHITECTURES
# to the GPUs you run on (CMake's CUDAARCHS; fewer architectures build faster).
#
# The image is made for Kubernetes' hardened pods (helm/kiroku): it runs as uid/gid 10001,
# needs no writable root filesystem (HOME=/tmp and the model directory /models are the
# only paths it writes to, both volumes in the chart), and binds nothing privileged.
#
# No Docker engine runs in CI: tests/chart/check.sh checks this file statically
# (tests/chart/dockerfile_check.py and hadolint).

ARG VARIANT=cpu
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim
ARG CUDA_BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------
# The Rust toolchain (also copied into the CUDA build stage).
FROM ${RUST_IMAGE} AS toolchain

# ---------------------------------------------------------------------------------------
# Build stage, CPU: whisper.cpp is compiled by whisper-rs-sys with cmake and a C++
# compiler. The bindings bundled with whisper-rs are used (WHISPER_DONT_GENERATE_BINDINGS
# in .cargo/config.toml), so neither clang nor libclang is needed.
FROM toolchain AS build-cpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake \
        g++ \
        make \
    && rm -rf /var/lib/apt/lists/*
ENV KIROKU_CARGO_FEATURES=""

# ---------------------------------------------------------------------------------------
# Build stage, CUDA: NVIDIA's devel image (nvcc, cuBLAS headers) with the same Rust
# toolchain as the CPU build (rustup's toolchains run on any glibc >= 2.17).
FROM ${CUDA_BUILD_IMAGE} AS build-cuda
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    CUDAARCHS=${CUDA_ARCHITECTURES} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs \
    KIROKU_CARGO_FEATURES=cuda
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake \
        g++ \
        make \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------
# The one binary. Cache mounts keep the registry and target directory between builds; the
# binary is copied out of the cached target directory in the same step. (DL3006 is about
# untagged images; `build-${VARIANT}` is one of the stages above.)
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kiroku-cli ${KIROKU_CARGO_FEATURES:+--features "$KIROKU_CARGO_FEATURES"} \
    && install -D -m 0755 target/release/kiroku /out/kiroku

# ---------------------------------------------------------------------------------------
# Runtime bases. libgomp1: whisper.cpp's ggml uses OpenMP threads; postgresql-client:
# pg_dump and psql for `kiroku admin backup` and `restore` (a backup CronJob runs this
# image).
FROM ${RUNTIME_IMAGE} AS runtime-cpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        libgomp1 \
        postgresql-client \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---------------------------------------------------------------------------------------
# The image: one binary, one unprivileged user, nothing else (`runtime-${VARIANT}` is one
# of the stages above, not an untagged image).
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG KIROKU_UID=10001
RUN groupadd --system --gid "${KIROKU_UID}" kiroku \
    && useradd --system --uid "${KIROKU_UID}" --gid kiroku --no-create-home \
        --home-dir /tmp --shell /usr/sbin/nologin kiroku \
    && install -d -o kiroku -g kiroku -m 0750 /models
COPY --from=build /out/kiroku /usr/local/bin/kiroku
# HOME=/tmp: the only scratch path (an emptyDir in the chart); KIROKU_MODEL_DIR: where
# `kiroku model fetch` writes and workers read the ggml model (a volume in the chart).
ENV HOME=/tmp \
    KIROKU_MODEL_DIR=/models \
    KIROKU_LOG_FORMAT=json
WORKDIR /tmp
# gRPC: gateway 50051, account 50053, audit 50054. Admin HTTP (/healthz, /readyz,
# /metrics): gateway 9464, worker 9465 (set by the chart), account 9466, audit 9467.
EXPOSE 50051 50053 50054 9464 9465 9466 9467
USER 10001:10001
# Health is probed by the orchestrator on the admin port (`GET /healthz` liveness, `GET
# /readyz` readiness; helm/kiroku sets both); the image carries no HTTP client for a
# Docker HEALTHCHECK, and `kiroku` itself has no health subcommand.
HEALTHCHECK NONE
ENTRYPOINT ["kiroku"]
CMD ["--help"]
