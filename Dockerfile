# llm-token-metrics: the service under Gunicorn, for one host or container.
#   docker build -t llm-token-metrics .
#   docker run --rm -p 8000:8000 llm-token-metrics
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Install the project and the dependencies that pyproject.toml declares, then
# drop the source: the service runs from site-packages.
COPY pyproject.toml README.md /tmp/build/
COPY service /tmp/build/service/
RUN pip install /tmp/build && rm -rf /tmp/build

# Run as an unprivileged user, owning only the directory it writes to.
RUN groupadd --system --gid 10001 llm \
    && useradd --system --uid 10001 --gid llm --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin llm \
    && mkdir -p /run/llm-token-metrics \
    && chown llm:llm /run/llm-token-metrics

WORKDIR /app
COPY gunicorn.conf.py ./
COPY config/service.toml ./config/

# PROMETHEUS_MULTIPROC_DIR: where every worker keeps its metric files; the
# arbiter empties it at start. LLM_METRICS_CONFIG: the installed package does
# not sit beside config/, so name the file. WEB_CONCURRENCY: the default in
# gunicorn.conf.py counts the host's CPUs, not the container's CPU limit;
# 3 workers suit one CPU (2 per CPU plus 1): raise it with the CPUs you give.
ENV PROMETHEUS_MULTIPROC_DIR=/run/llm-token-metrics \
    LLM_METRICS_CONFIG=/app/config/service.toml \
    WEB_CONCURRENCY=3

USER 10001:10001
EXPOSE 8000

# The slim image has no curl. urlopen raises, so the check fails, on a 4xx or
# 5xx status and when nothing answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# --bind 0.0.0.0: gunicorn.conf.py binds 127.0.0.1, which a container's port
# mapping cannot reach. --worker-tmp-dir /dev/shm: the workers' heartbeat
# files on a tmpfs, as Gunicorn's FAQ advises, so a slow disk cannot stall them.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm"]
