# syntax=docker/dockerfile:1
# snapshotd image: `docker build -t snapshotd .` from the repository root.
# Pin PYTHON_IMAGE to a digest (python:3.11-slim@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a self-contained virtualenv with snapshotd and its pinned dependencies
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/snapshotd
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY service/ service/
# service/snapshotd/migrations is a symlink to ../../migrations: the wheel resolves it.
COPY migrations/ migrations/
# A regular (non-editable) install, constrained to the versions the tests ran with,
# with the gRPC exporter (OTEL_EXPORTER_OTLP_PROTOCOL=grpc).
RUN /opt/snapshotd/bin/pip install -c constraints.txt ".[grpc]"

# --- runtime
FROM ${PYTHON_IMAGE}
# tini from Debian (the PyPI package of that name is unrelated) runs as PID 1: it
# forwards SIGTERM to the daemon, which drains and exits 0, and reaps zombies.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so volumes and the app container's group can be set up to match.
ARG SNAPSHOTD_UID=10001
ARG SNAPSHOTD_GID=10001
RUN groupadd --system --gid "${SNAPSHOTD_GID}" snapshotd \
    && useradd --system --uid "${SNAPSHOTD_UID}" --gid snapshotd \
        --home-dir /var/lib/snapshotd --no-create-home --shell /usr/sbin/nologin snapshotd \
    && install -d -o snapshotd -g snapshotd -m 0750 /run/snapshotd /var/lib/snapshotd \
    && install -d -m 0755 /etc/snapshotd /usr/share/snapshotd

COPY --from=builder /opt/snapshotd /opt/snapshotd
# The same SQL files the wheel carries, kept visible for operators and used explicitly.
COPY migrations/ /usr/share/snapshotd/migrations/
# The default config; mount your own file (or a ConfigMap) over it.
COPY deploy/docker/snapshotd.toml /etc/snapshotd/snapshotd.toml

ENV PATH=/opt/snapshotd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SNAPSHOTD_MIGRATIONS=/usr/share/snapshotd/migrations

# Numeric, so Kubernetes can verify runAsNonRoot.
USER ${SNAPSHOTD_UID}:${SNAPSHOTD_GID}
WORKDIR /var/lib/snapshotd
# The socket directory is shared with the application (a volume in compose, an
# emptyDir in Kubernetes); the data directory holds the fs journal, when used.
VOLUME ["/run/snapshotd", "/var/lib/snapshotd"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["snapshotd", "status", "--socket", "/run/snapshotd/snapshotd.sock"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "snapshotd"]
CMD ["serve", "--config", "/etc/snapshotd/snapshotd.toml"]
