# One image for every role: api, worker, sweeper, migrate, flower (the command picks).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package itself (not editable), then drop the sources: at /app they would
# shadow the installed `saga`, which holds saga.api and saga.migrations.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY api ./api
COPY migrations ./migrations
RUN pip install '.[deploy]' && rm -rf /src

# The example sagas are not part of the package; SAGA_SAGAS imports them from /app.
WORKDIR /app
COPY examples ./examples
ENV PYTHONPATH=/app \
    SAGA_SAGAS=examples.fulfillment

RUN groupadd --system --gid 10001 saga \
    && useradd --system --uid 10001 --gid saga --no-create-home --shell /usr/sbin/nologin saga
USER 10001:10001

EXPOSE 8000
# `saga api` serves under gunicorn (SAGA_API_WORKERS, SAGA_API_THREADS).
CMD ["saga", "api", "--host", "0.0.0.0", "--port", "8000"]
