# logagent container image: `docker build -t logagent:0.1.0 .`
# Stage 1 builds wheels for logagent and every dependency (systemd-python is compiled here against libsystemd);
# stage 2 installs them into a clean slim image without compilers.
# The base is pinned by full version; pin a digest as well (python:3.11.9-slim-bookworm@sha256:...) in a registry
# you control.
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc pkg-config libsystemd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY logagent/ logagent/
COPY inputs/ inputs/
COPY outputs/ outputs/
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[systemd,fast]'

FROM ${PYTHON_IMAGE} AS runtime
# libsystemd0: what systemd-python (journal input, sd_notify) links against at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsystemd0 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'logagent[systemd,fast]' \
 && rm -rf /wheels \
 && groupadd --system --gid 10001 logagent \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin logagent \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/logagent
COPY conf/logagent.yaml /etc/logagent/logagent.yaml
# Bytecode was compiled at install time; the DaemonSet's root filesystem is read-only anyway.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOGAGENT_STATE_DIR=/var/lib/logagent
# Non-root by default (sidecar mode, or `docker run` on logs the user can read). The node DaemonSet overrides
# this with uid 0 and exactly two capabilities: see conf/kubernetes/30-daemonset.yaml for why.
USER 10001:10001
EXPOSE 2020
ENTRYPOINT ["logagent", "run", "-c", "/etc/logagent/logagent.yaml"]
