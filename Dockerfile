# One image for every mesflow service (migrate, collector-mqtt, dataflow, dashboard, api,
# notify, simulator); docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MESFLOW_HTTP_HOST=0.0.0.0 \
    MESFLOW_DATA_DIR=/app/var

WORKDIR /app

# Dependencies first, at exactly the locked versions with their hashes (scripts/lock.sh),
# so that code edits do not reinstall them and a new upstream release changes nothing.
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt

# mesflow itself as a regular (not editable) install: the wheel carries its migrations,
# the example plant and the boards' styles as package data. config/ stays at /app/config,
# where docker-compose.yml mounts the plant file.
COPY . /src
RUN pip install --no-deps /src \
 && mkdir -p /app/config /app/var/recovery /app/var/simulator \
 && cp -r /src/config/. /app/config/ \
 && rm -rf /src \
 && useradd --system --uid 10001 --home-dir /app --no-create-home mesflow \
 && chown -R mesflow:mesflow /app/var

# /app/var/recovery and /app/var/simulator exist and belong to mesflow before volumes are
# mounted on them, so a new named volume starts with that owner and the non-root dataflow
# (snapshots) and simulator (where it stopped) can write there.
USER mesflow
EXPOSE 8050 8060
CMD ["mesflow", "--help"]
