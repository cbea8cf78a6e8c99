# The learnops image: the wheel and its `learnops` command, nothing else.
#   docker build -t learnops:local .
#   docker run --rm learnops:local --help
#
# Stage one builds the wheel from the package sources; stage two installs that
# wheel and nothing of the checkout. The topic catalogue and learning.yaml are
# package data (agents/resources/), so no LEARNOPS_*_FILE is set here:
# tests/integration/test_wheel.py runs the same commands from the same wheel.

FROM python:3.11-slim AS wheel

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agents ./agents
COPY learning ./learning
COPY learnops ./learnops
COPY models ./models
COPY storage ./storage
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# EXTRAS: the package's optional extras, e.g. --build-arg EXTRAS=rocksdb for
# LEARNOPS_TABLE_STORE=rocksdb (docs/operations.md, "Memory and recovery").
ARG EXTRAS=""
COPY --from=wheel /wheels /tmp/wheels
RUN wheel="$(ls /tmp/wheels/learnops-*.whl)" \
    && pip install "${wheel}${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /tmp/wheels \
    && useradd --system --create-home --home-dir /var/lib/learnops learnops \
    && install -d -o learnops /var/lib/learnops/worker

# Inside a container the web server (health, readiness, metrics) must listen on
# every interface to be published; the package's default stays loopback.
# LEARNOPS_DATA_DIR is the worker's writable state, not a file of the package.
ENV LEARNOPS_WEB_HOST=0.0.0.0 \
    LEARNOPS_DATA_DIR=/var/lib/learnops/worker

USER learnops
WORKDIR /var/lib/learnops
# A worker's table state (RocksDB files with that store): a volume per worker.
VOLUME /var/lib/learnops/worker
EXPOSE 6066
ENTRYPOINT ["learnops"]
CMD ["worker", "-l", "info"]
