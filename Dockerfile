# imagine-bot: slim, non-root, the database on a volume, no secrets baked in (pass them at run time:
#   docker run --env-file .env -v imagine-data:/data imagine-bot).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/imagine-bot.db \
    HEALTH_HOST=0.0.0.0 \
    HEALTH_PORT=8080
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin imagine \
    && mkdir -p /data && chown imagine /data
USER imagine
WORKDIR /data
VOLUME ["/data"]
# /healthz (alive), /readyz (connected, store answers, dispatching) and /metrics (Prometheus).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HEALTH_PORT', '8080') + '/healthz', timeout=4)"]
CMD ["imagine-bot"]
