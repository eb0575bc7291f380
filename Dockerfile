# raft-sidecar and settlement-demo in one image (the Helm chart runs both
# containers of a pod from it). Build from the repository root:
#
#   docker build -t raft-sidecar:0.1.0 .
#
# Stage 1 builds the project and its dependencies with pip; stage 2 copies
# the installed tree onto a clean python:3.11-slim, with no compilers, no
# pip cache and a non-root user whose uid (10001) is the chart's runAsUser.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the build needs (see .dockerignore): the package metadata first,
# then the sources.
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY settlement_demo/ settlement_demo/

# Every dependency ships manylinux wheels for CPython 3.11 (grpcio,
# google-crc32c, psycopg[binary]), so no compiler is needed even here;
# --only-binary makes a missing wheel fail the build instead of compiling.
RUN pip wheel --wheel-dir /wheels --only-binary=:all: . \
 && pip install --prefix=/install --no-index --find-links=/wheels --compile raft-sidecar


FROM python:3.11-slim

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
