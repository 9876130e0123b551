# syntax=docker/dockerfile:1
# realtime-sync: the service image. Dapr runs next to it (Kubernetes: the injected daprd
# sidecar; see deploy/kubernetes/), so the image holds only the Python service.
#
#   docker build -t realtime-sync:dev .
#   docker run --rm -e JWT_SECRET=... -p 8080:8080 realtime-sync:dev   # needs a daprd
#
# Pin the base image by digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build stage: resolve and install the package into a self-contained venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package build needs (.dockerignore keeps everything else out): the
# package, and the browser client module the wheel carries for the board.
COPY pyproject.toml README.md ./
COPY realtime_sync ./realtime_sync
COPY clients/js/realtime-sync.js ./clients/js/realtime-sync.js
# Every dependency ships manylinux wheels (grpcio, protobuf, orjson, cryptography), so no
# compiler is installed here either. A non-editable install: /src is not needed later.
# The packaging tools are then removed from the venv: the final image cannot install.
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

# --- final stage: slim runtime, non-root, no build or packaging tools ----------------
FROM ${PYTHON_IMAGE}
# The base image's own pip/setuptools/wheel are not needed at run time either.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WS_PORT=8080 \
    APP_PORT=50051 \
    LOG_FORMAT=json
# 8080: WebSocket + /healthz /readyz /metrics. 50051: gRPC app callback, for daprd only
# (it listens on APP_HOST, 127.0.0.1 by default: daprd shares the pod's network).
EXPOSE 8080 50051
# A numeric uid so Kubernetes can verify runAsNonRoot.
USER 10001:10001
# Slim images have no curl: probe /healthz with the standard library. urlopen raises on
# a non-2xx status or a refused connection, which exits 1 (unhealthy). No proxy: the
# probe is local.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('WS_PORT', '8080') + '/healthz', timeout=2)"]
# SIGTERM starts the drain (readyz 503, 1001 closes spread over DRAIN_S).
STOPSIGNAL SIGTERM
ENTRYPOINT ["realtime-sync"]
CMD ["serve"]
