# One image for every mesflow service (migrate, collector-mqtt, dataflow, dashboard, simulator);
# docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MESFLOW_HTTP_HOST=0.0.0.0 \
    MESFLOW_DATA_DIR=/app/var

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that code edits do not reinstall them.
COPY pyproject.toml /app/
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# mesflow finds sql/ and config/ next to its package (settings.REPO_ROOT is the parent of
# mesflow/), so the source tree stays at /app and is installed in editable mode: the
# `mesflow` command then imports /app/mesflow and reads /app/sql and /app/config.
COPY . /app
RUN pip install --no-deps -e /app \
 && useradd --system --uid 10001 --home-dir /app --no-create-home mesflow \
 && mkdir -p /app/var/recovery \
 && chown -R mesflow:mesflow /app/var

# /app/var/recovery exists and belongs to mesflow before a volume is mounted on it, so a new
# named volume starts with that owner and the non-root dataflow can write its snapshots.
USER mesflow
EXPOSE 8050
CMD ["mesflow", "--help"]
