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
    DATABASE_URL=sqlite:////data/imagine-bot.db
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin imagine \
    && mkdir -p /data && chown imagine /data
USER imagine
WORKDIR /data
VOLUME ["/data"]
CMD ["imagine-bot"]
