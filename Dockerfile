# raft-sidecar and settlement-demo in one image (the Helm chart runs both
# containers of a pod from it). Build from the repository root:
#
#   docker build -t raft-sidecar:0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
# Reproducible inputs: the base image is pinned by digest, and every Python
# package comes from a hash-locked file (scripts/image/*.lock, installed with
# --require-hashes; docs/kubernetes.md, "The image", says how to refresh
# them). Stage 1 installs the locked dependencies in a layer of their own
# (rebuilt only when a lock changes), then the project without dependencies;
# stage 2 copies the installed tree onto a clean base, with no compilers, no
# pip cache and a non-root user whose uid (10001) is the chart's runAsUser.

# python:3.11-slim, the multi-architecture index (amd64, arm64, ...).
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Dependencies first, from the locks only: a change to the sources reuses
# this layer instead of downloading every wheel again. Every dependency ships
# manylinux wheels for CPython 3.11 (grpcio, google-crc32c, psycopg-binary,
# cryptography), so --only-binary makes a missing wheel fail the build
# instead of compiling. --no-deps: the lock is the complete set.
COPY scripts/image/runtime.lock scripts/image/build.lock scripts/image/
RUN pip install --require-hashes --no-deps --only-binary=:all: --compile \
        --prefix=/install -r scripts/image/runtime.lock \
 && pip install --require-hashes --no-deps --only-binary=:all: -r scripts/image/build.lock

# Then the project: no dependencies (installed above) and no build isolation
# (which would fetch setuptools unpinned; the locked one is installed above).
COPY pyproject.toml README.md LICENSE ./
COPY sidecar/ sidecar/
COPY settlement_demo/ settlement_demo/
RUN pip install --no-deps --no-build-isolation --compile --prefix=/install .


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG BASE_IMAGE
# OCI image annotations (github.com/opencontainers/image-spec, annotations.md).
LABEL org.opencontainers.image.title="raft-sidecar" \
      org.opencontainers.image.description="A Raft leader-election sidecar that grants fenced leadership tokens to settlement workers, with the settlement-demo worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, numeric non-root user: Kubernetes' runAsNonRoot can only verify a
# numeric USER, and the chart's securityContext.runAsUser is the same 10001.
RUN groupadd --system --gid 10001 raft \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin raft \
 && mkdir -p /var/lib/raft-sidecar \
 && chown 10001:10001 /var/lib/raft-sidecar

# The installed packages and the console scripts (raft-sidecar,
# settlement-demo) land in /usr/local, on PATH.
COPY --from=builder /install /usr/local

# Fail the build, not the rollout, if an entry point is missing.
RUN raft-sidecar version && settlement-demo --help >/dev/null

USER 10001:10001
WORKDIR /var/lib/raft-sidecar
# peer, metrics, health (gRPC probes), worker HTTP. The worker API (7401)
# listens on 127.0.0.1 inside the pod and is not exposed.
EXPOSE 7400 7402 7403 8080
VOLUME ["/var/lib/raft-sidecar"]

CMD ["raft-sidecar", "--help"]
