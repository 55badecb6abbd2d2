# One image for the gateway, the demo backend and the ZITADEL bootstrap; docker-compose.yml picks the command.

# Build stage: the project and all its dependencies as wheels. Only the wheels leave this stage.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY gateway/ gateway/
COPY demo_backend/ demo_backend/
COPY deploy/ deploy/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: the wheels installed (bind-mounted, so they are not kept in a layer), the routes, an
# unprivileged user. No compiler, no sources, no pip cache.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
# /bootstrap belongs to the app user, so a fresh volume mounted there does too (Docker copies the ownership).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && install --directory --owner=app --group=app --mode=0700 /bootstrap
WORKDIR /app
COPY config.yaml /app/config.yaml
USER app
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '9091'), timeout=2)"]
CMD ["python", "-m", "gateway", "--config", "/app/config.yaml"]
