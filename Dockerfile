# One image for every posflow role; the role is the command:
#   docker run posflow worker
#   docker run posflow gateway
#   docker run posflow service review      (contract, device, logistics, notification)
# Configuration comes from the environment only (deploy/README.md lists every variable).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY workflows workflows
COPY activities activities
COPY workers workers
COPY cli cli
COPY services services
COPY gateway gateway
# pip byte-compiles what it installs, so the workflow sandbox loads .pyc files instead of
# recompiling the workflow module for every run. psycopg is the PostgreSQL driver of the
# gateway's and the services' stores (DATABASE_URL=postgresql+psycopg://...).
RUN pip install . "psycopg[binary]==3.3.9" \
    && rm -rf /src

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/posflow posflow
WORKDIR /home/posflow
USER 10001
# POSFLOW_HOME holds only what a laptop keeps there (the SQLite defaults); a deployment sets
# DATABASE_URL and passes keys and secrets in the environment.
ENV POSFLOW_HOME=/home/posflow/.posflow \
    POSFLOW_LOG_FORMAT=json

# gateway 8000; services 8101-8105; worker metrics 9464
EXPOSE 8000 8101 8102 8103 8104 8105 9464
# posflow handles SIGTERM itself: the worker stops polling and lets running activities finish
# within POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS; the HTTP roles finish their requests.
STOPSIGNAL SIGTERM
ENTRYPOINT ["posflow"]
CMD ["worker"]
