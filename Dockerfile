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

COPY --from=wheel /wheels /tmp/wheels
RUN pip install /tmp/wheels/learnops-*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --create-home --home-dir /var/lib/learnops learnops

# Inside a container the web server (health, readiness, metrics) must listen on
# every interface to be published; the package's default stays loopback.
# LEARNOPS_DATA_DIR is the worker's writable state, not a file of the package.
ENV LEARNOPS_WEB_HOST=0.0.0.0 \
    LEARNOPS_DATA_DIR=/var/lib/learnops/worker

USER learnops
WORKDIR /var/lib/learnops
EXPOSE 6066
ENTRYPOINT ["learnops"]
CMD ["worker", "-l", "info"]
