# syntax=docker/dockerfile:1
# advguard's gRPC server: ONNX Runtime, no torch.
#
#   docker build -f deploy/docker/serve.Dockerfile -t advguard-serve .      (from the repo root)
#   docker run -p 50051:50051 -p 9100:9100 -v "$PWD/model_store:/models:ro" advguard-serve
#
# The install is deploy/docker/install.sh VENV: the plain `pip install .` (base dependencies only,
# every package pinned by serve-constraints.txt); tests/deploy/test_serve_install.py runs the same
# script into a fresh venv and serves a bundle from it, since no container runtime runs in CI.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY advguard advguard
COPY serving serving
COPY deploy/docker/install.sh deploy/docker/serve-constraints.txt deploy/docker/
RUN sh deploy/docker/install.sh /opt/advguard

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="advguard-serve" \
      org.opencontainers.image.description="advguard gRPC server on ONNX Runtime"
ENV PATH=/opt/advguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/advguard /opt/advguard
COPY deploy/docker/health_probe.py /opt/advguard/bin/health_probe.py
# The model store: mount model_store/ here (read-only is fine; hot reload only reads it).
VOLUME ["/models"]
USER 10001:10001
# 50051: gRPC (advguard.v1, OIP, health, reflection); 9100: Prometheus /metrics.
EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/advguard/bin/health_probe.py", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["advguard", "serve"]
CMD ["--store", "/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-host", "0.0.0.0", "--metrics-port", "9100"]
