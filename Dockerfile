# One image for every stripemeter process: `stripemeter worker`, `api`, `stripe-emulator`, and the
# one-off `db migrate` / `topics create` (docker-compose.yml, deploy/k8s/).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stripemeter ./stripemeter
COPY streams ./streams
COPY api ./api
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
    && mkdir -p /var/lib/stripemeter \
    && chown nobody:nogroup /var/lib/stripemeter
# the worker's table state (RocksDB); a fresh volume mounted here starts owned by nobody
ENV STRIPEMETER_STATE_DIR=/var/lib/stripemeter
# API, worker health and metrics, Stripe emulator
EXPOSE 3000 6066 12111
USER nobody
