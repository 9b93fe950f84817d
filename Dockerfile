# syntax=docker/dockerfile:1
# Build stage: install the locked dependencies into a virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements/prod.lock requirements/prod.lock
# The lock pins every package (uv pip compile), so nothing unpinned is resolved here.
RUN /opt/venv/bin/pip install --no-deps -r requirements/prod.lock

# Runtime stage: the virtualenv, the code and its migrations, and nothing to build with.
FROM python:3.11-slim-bookworm
# No PYTHONUNBUFFERED needed: the service writes its log lines itself, once per event-loop turn
# (one write for the lines of a turn), and flushes them; stderr, where a crash's traceback goes,
# is line-buffered anyway.
ENV PATH="/opt/venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 PORT=8000 LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin optin
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"]
CMD ["python", "-m", "app.cli", "serve"]
