# syntax=docker/dockerfile:1
# TorchServe 0.12.0 with advguard's handler (serving/torchserve_handler.py: the gRPC server's core).
# Token authorization on; the management API on loopback only; no model downloads (see
# deploy/docker/torchserve.config.properties).
#
#   docker build -f deploy/docker/torchserve.Dockerfile -t advguard-torchserve .   (from the repo root)
#   docker run -p 8080:8080 -p 8082:8082 \
#       -v "$PWD/model_store/fmnist-fast/1:/home/model-server/model-store:ro" advguard-torchserve
#   docker exec <container> cat /home/model-server/key_file.json     # the inference key
#   curl -H "Authorization: Bearer <inference key>" -T image.png http://127.0.0.1:8080/predictions/fmnist-fast

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu TORCH_PACKAGES=torch
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY advguard advguard
COPY serving serving
COPY deploy/docker/install.sh deploy/docker/serve-constraints.txt deploy/docker/torchserve-constraints.txt deploy/docker/
RUN sh deploy/docker/install.sh /opt/advguard torchserve

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="advguard-torchserve" \
      org.opencontainers.image.description="TorchServe 0.12.0 with advguard's handler"
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.0.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/model-server model-server
ENV PATH=/opt/advguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
COPY --from=build /opt/advguard /opt/advguard
COPY deploy/docker/torchserve.config.properties /home/model-server/config.properties
COPY deploy/docker/torchserve_health.py /opt/advguard/bin/torchserve_health.py
WORKDIR /home/model-server
# The .mar files (`advguard export --torchserve` writes <name>.mar into the bundle folder).
VOLUME ["/home/model-server/model-store"]
USER 10001:10001
# 8080: inference API (token); 8082: metrics. The management API (8081) listens on loopback only.
EXPOSE 8080 8082
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "/opt/advguard/bin/torchserve_health.py", "http://127.0.0.1:8080/ping"]
ENTRYPOINT ["torchserve", "--start", "--foreground", "--ncs"]
CMD ["--ts-config", "/home/model-server/config.properties", "--model-store", "/home/model-server/model-store", "--models", "all"]
