# audioserve on a CUDA runtime with onnxruntime-gpu. Model packs are mounted at /models,
# saved voices at /voices (a volume: docker-compose.yml, deploy/kuberay-rayservice.yaml).
# onnxruntime-gpu 1.31 wheels for Python 3.12 are built against CUDA 13 and cuDNN 9.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AUDIOSERVE_HOST=0.0.0.0 \
    AUDIOSERVE_PORT=8000 \
    AUDIOSERVE_MODELS_DIR=/models \
    AUDIOSERVE_VOICES_DIR=/voices \
    AUDIOSERVE_PROVIDER=auto

# wget: KubeRay's probes call it (deploy/kuberay-rayservice.yaml runs this image)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY batcher ./batcher
COPY export ./export
COPY quant ./quant
# `cluster`: the same image runs `python -m service.cluster` and KubeRay's Ray nodes
RUN pip install ".[gpu,cluster]"

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
CMD ["python3", "-m", "service"]
