# syntax=docker/dockerfile:1
# advguard's training CLI (`advguard train|attack|evaluate|export|...`) on CPU torch 2.14.1.
#
#   docker build -f deploy/docker/train.Dockerfile -t advguard-train .      (from the repo root)
#   docker run --rm -v "$PWD/runs:/work/runs" -v "$PWD/model_store:/work/model_store" advguard-train \
#       train --model fmnist-fast --epochs 10 --out runs/fmnist-fast
#
# Fashion-MNIST comes from Debian's dataset-fashion-mnist (the CLI's default --data-dir).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu TORCH_PACKAGES="torch torchvision"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY advguard advguard
COPY serving serving
COPY training training
COPY deploy/docker/install.sh deploy/docker/serve-constraints.txt deploy/docker/train-constraints.txt deploy/docker/
RUN sh deploy/docker/install.sh /opt/advguard train

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="advguard-train" \
      org.opencontainers.image.description="advguard training CLI (CPU torch)"
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/advguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /opt/advguard /opt/advguard
WORKDIR /work
# Runs (checkpoints, reports) and exported bundles outlive the container.
VOLUME ["/work/runs", "/work/model_store"]
USER 10001:10001
ENTRYPOINT ["advguard"]
CMD ["--help"]
