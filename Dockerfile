FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stripemeter ./stripemeter
COPY streams ./streams
COPY api ./api
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
