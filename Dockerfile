# Ballista: the load generator and its daemon (`ballista serve`) in a slim image.
#   docker build -t ballista .
#   docker run --rm -p 127.0.0.1:8089:8089 -e BALLISTA_TOKEN=... ballista
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BALLISTA_DATA_DIR=/var/lib/ballista

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ballista ./ballista
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/ballista --create-home ballista \
    && chmod 0700 /var/lib/ballista

USER ballista
WORKDIR /var/lib/ballista
VOLUME ["/var/lib/ballista"]
# 8089: API, /metrics, live page · 8090: live stream · 9464: /metrics alone
EXPOSE 8089 8090 9464

# /api/health needs no token; python is there, curl is not.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8089/api/health', timeout=4).status == 200 else 1)"]

# Inside a container the daemon must listen beyond loopback, which needs a
# token: pass BALLISTA_TOKEN (the daemon refuses to start without one).
ENTRYPOINT ["ballista"]
CMD ["serve", "--addr", "0.0.0.0", "--port", "8089", "--live-port", "8090", "--data-dir", "/var/lib/ballista"]
