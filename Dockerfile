# One image for every stripemeter process: `stripemeter api` (the default command), `worker`,
# `stripe-emulator`, and the one-off `db migrate` / `topics create` (docker-compose.yml, deploy/k8s/).
#
# The base is pinned by version and by the digest of its multi-architecture index: a rebuild gets the
# same Python and Debian until someone moves both. The dependencies are requirements.lock's exact
# versions, each file checked against its hash (`./dev lock` makes the file from pyproject.toml);
# the project itself is built into a wheel and installed without dependencies, so nothing is resolved
# at build time. CI builds the same wheel, installs it with the same lock into a clean virtualenv
# and runs every process from it (tests/integration/test_installed_package.py).
ARG BASE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/stripemeter
COPY requirements.lock /src/
RUN /opt/stripemeter/bin/pip install --require-hashes --only-binary=:all: -r /src/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stripemeter ./stripemeter
COPY api ./api
COPY schemas ./schemas
RUN /opt/stripemeter/bin/pip wheel --no-deps --wheel-dir /src/dist . \
    && /opt/stripemeter/bin/pip install --no-deps /src/dist/stripemeter-*.whl

FROM ${BASE}
COPY --from=build /opt/stripemeter /opt/stripemeter
# the worker's table state (RocksDB); a fresh volume mounted here starts owned by the process' user
RUN mkdir -p /var/lib/stripemeter && chown 65534:65534 /var/lib/stripemeter
ENV PATH=/opt/stripemeter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STRIPEMETER_STATE_DIR=/var/lib/stripemeter
WORKDIR /var/lib/stripemeter
# API, API operator metrics, worker health and metrics, Stripe emulator
EXPOSE 3000 9464 6066 12111
# nobody, by number: Kubernetes' runAsNonRoot can only verify a numeric user
USER 65534:65534
# a command, not an entrypoint: compose's `command:` and Kubernetes' `command:` name the whole command
# line (`stripemeter worker`, `sh -c "stripemeter db migrate && ..."`)
CMD ["stripemeter", "api"]
