# One image for every role: api, worker, sweeper, migrate (the command picks).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY api ./api
COPY examples ./examples
RUN pip install --no-cache-dir '.[deploy]'
ENV SAGA_SAGAS=examples.fulfillment
EXPOSE 8000
CMD ["saga", "api", "--host", "0.0.0.0", "--port", "8000"]
