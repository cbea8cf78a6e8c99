# The learnops image: the package and its `learnops` command, nothing else.
#   docker build -t learnops:local .
#   docker run --rm learnops:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install . \
    && useradd --system --create-home --home-dir /var/lib/learnops learnops

# An installed package cannot find topics.yaml or a data dir beside its source,
# so name them.
ENV LEARNOPS_TOPICS_FILE=/app/topics.yaml \
    LEARNOPS_DATA_DIR=/var/lib/learnops/worker

USER learnops
EXPOSE 6066
ENTRYPOINT ["learnops"]
CMD ["worker", "-l", "info"]
