# syntax=docker/dockerfile:1
# The jangteo server image: `docker build -t jangteo .`, then see docker-compose.yml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY db ./db
COPY realtime ./realtime
RUN pip install --upgrade pip && pip install .

FROM python:3.11-slim
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
USER jangteo
WORKDIR /var/lib/jangteo
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["jangteo", "serve", "--host", "0.0.0.0", "--port", "8080"]
