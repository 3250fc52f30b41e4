# syntax=docker/dockerfile:1
# The Imagine bot: `docker build -t imagine-bot .`, then see compose.yaml.

# -- build: a wheel of the bot and of every runtime dependency ----------------------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY providers ./providers
COPY ledger ./ledger
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- run: only the wheels, as an unprivileged user ----------------------------------
FROM python:3.11.11-slim-bookworm
RUN useradd --create-home --uid 10001 imagine \
    && mkdir -p /data /app/config \
    && chown imagine:imagine /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels imagine-bot \
    && rm -rf /wheels
WORKDIR /app
# The registry is baked in; mount another file over it to change models and prices.
COPY config/models.toml /app/config/models.toml
ENV DATABASE_URL=sqlite+aiosqlite:////data/imagine.db \
    MODELS_FILE=/app/config/models.toml \
    OUTPUT_DIR=/data/out \
    METRICS_PORT=9090 \
    LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
USER imagine
# matplotlib (the /stats charts) lists the fonts it ships into a cache in the user's home
# once; listed here, at build time, so the first chart of a new container need not wait.
RUN python -c "import matplotlib.font_manager"
EXPOSE 3000 9090
# Liveness, not readiness: a slow database must not get a busy bot restarted mid-generation.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/livez', timeout=4).status != 200)"]
# `run` upgrades an older database before it starts; other commands refuse one.
ENTRYPOINT ["imagine-bot"]
CMD ["run"]
