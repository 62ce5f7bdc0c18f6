# syntax=docker/dockerfile:1
# wgs: one image for the three services (graph, dispatch, supervisor) and the agent (`wgs-agent`).
#   docker build -t wgs:0.1.0 .
#   docker run --rm -p 50151:50151 wgs:0.1.0                  # graph (SQLite in the state volume)
#   docker run --rm wgs:0.1.0 serve supervisor                # any service: `serve <name>`
# The base is pinned by exact patch version; pin by digest as well for reproducible release builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: wheel of the project, installed with its dependencies into /opt/venv -----------------
FROM ${PYTHON_IMAGE} AS build
# Bytecode is compiled at install time here, so the read-only runtime never needs to write it.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A current pip in the venv: older resolvers give up on the OpenTelemetry instrumentation pins.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install "pip==26.3"
# README.m[d]: the wheel metadata reads README.md; the glob keeps the build working without it.
COPY pyproject.toml README.m[d] ./
COPY wgs ./wgs
COPY services ./services
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && /opt/venv/bin/pip install /dist/wgs-*.whl \
 && /opt/venv/bin/pip check \
 && test -x /opt/venv/bin/wgs \
 && test -x /opt/venv/bin/wgs-agent \
 && /opt/venv/bin/python -c "import services.graph, services.dispatch, services.supervisor, wgs.cli.main"

# ---- runtime: the venv only (no compilers, no build tree, no secrets) -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="wgs" \
      org.opencontainers.image.description="workgraph services: gRPC services that create, spawn and supervise LLM chat agents" \
      org.opencontainers.image.licenses="MIT"
# The supervisor resolves `wgs-agent` next to its own interpreter (/opt/venv/bin) first; PATH has it too.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/wgs \
    WGS_STATE_DIR=/var/lib/wgs \
    WGS_LOG_FORMAT=json \
    WGS_GRAPH_LISTEN=0.0.0.0:50151 \
    WGS_DISPATCH_LISTEN=0.0.0.0:50152 \
    WGS_SUPERVISOR_LISTEN=0.0.0.0:50153
RUN groupadd --system --gid 10001 wgs \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/wgs --create-home --shell /usr/sbin/nologin wgs \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/wgs
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/wgs
USER 10001:10001
VOLUME ["/var/lib/wgs"]
EXPOSE 50151 50152 50153
ENTRYPOINT ["wgs"]
CMD ["serve", "graph"]
