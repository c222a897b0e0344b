# duquant-serve on NVIDIA GPU nodes, on top of the official vLLM OpenAI image (pinned version).
#   docker build -t duquant-serve .
#   docker run --gpus all --ipc=host -p 8000:8000 -v /path/to/ckpt:/model duquant-serve /model
ARG VLLM_VERSION=v0.32.0
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu22.04

# Stage 1: compile the CUTLASS kernels (the runtime image carries no nvcc).
FROM ${CUDA_DEVEL_IMAGE} AS kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY cutlass_ext ./cutlass_ext
COPY deploy/install.sh ./deploy/install.sh
ENV DUQUANT_ARCHS="80 90a"
RUN PYTHON=python3 bash deploy/install.sh kernels /opt/duquant/lib

# Stage 2: the server image.
FROM vllm/vllm-openai:${VLLM_VERSION}
WORKDIR /opt/duquant-src
COPY pyproject.toml README.md ./
COPY duquant_serve ./duquant_serve
COPY offline_quant ./offline_quant
COPY cutlass_ext ./cutlass_ext
COPY deploy/install.sh ./deploy/install.sh
RUN PYTHON=python3 bash deploy/install.sh package
COPY --from=kernels /opt/duquant/lib/libduquant_ext.so /opt/duquant/lib/libduquant_ext.so
COPY deploy/entrypoint.sh /usr/local/bin/duquant-entrypoint
RUN useradd --create-home --uid 1000 duquant
ENV DUQUANT_EXT_LIB=/opt/duquant/lib/libduquant_ext.so \
    HF_HOME=/home/duquant/.cache/huggingface \
    HOST=0.0.0.0 \
    PORT=8000
USER 1000
WORKDIR /home/duquant
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/duquant-entrypoint"]
CMD ["/model"]
