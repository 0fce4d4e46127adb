"""Publish a trained NLI model as a version the service can serve: `<root>/<version>/`.

The folder holds the model (a LoRA adapter, or a full model), `nli_report.json` (the evaluation
report, with the training data named in it) and `manifest.json`; `/model/info` of the service shows
both (steps.nli_model.model_card). `<root>/current` is then pointed at the new version, so a
Deployment that reads `current` (k8s/nli as first applied) serves it after its next restart; the
nli workflow's deploy node points the Deployment at the version itself.

    python -m steps.nli_publish --model runs/nli/ft/adapter --report runs/nli/report \\
        --root ~/.cache/kubellm/nli --version nli-abc12
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, Field

from steps._io import atomic_path, write_json, write_manifest

VERSION = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class NliPublishConfig(BaseModel):
    model: str = Field(description="the trained model folder: a LoRA adapter (adapter_config.json) or a full model")
    report: str = Field(description="the steps.nli_evaluate report folder (report.json)")
    root: str = Field(description="folder of published versions (on a cluster /models/nli, the kubellm-models claim)")
    version: str = Field(description="the version's folder name (the workflow name): lowercase letters, digits, "
                                     "'-' and '.'")
    training_data: str = Field("", description="what the model was trained on, shown by /model/info "
                                               "(default: as the report names it)")
    current: bool = Field(True, description="point <root>/current at this version")


def run(cfg: NliPublishConfig) -> dict:
    model, report_dir, root = Path(cfg.model), Path(cfg.report), Path(cfg.root)
    if not VERSION.fullmatch(cfg.version) or cfg.version == "current":
        raise ValueError(f"version {cfg.version!r}: use lowercase letters, digits, '-' and '.' (not 'current')")
    if not ((model / "adapter_config.json").is_file() or (model / "config.json").is_file()):
        raise ValueError(f"model {model}: no adapter_config.json or config.json there; give the fine-tune's "
                         "adapter or merged folder")
    try:
        report = json.loads((report_dir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"report {report_dir}: cannot read report.json ({e}); give the nli_evaluate output "
                         "folder") from None
    card = {"version": cfg.version, "training_data": cfg.training_data or report.get("training_data")
            or report.get("data"),
            "accuracy": (report.get("finetuned") or {}).get("accuracy"),
            "zero_shot_accuracy": (report.get("zero_shot") or {}).get("accuracy"),
            "verdict": report.get("verdict"), "split": report.get("split"), "n": report.get("n"),
            "macro_f1": (report.get("finetuned") or {}).get("macro_f1"),
            "ece": ((report.get("finetuned") or {}).get("calibration") or {}).get("ece"),
            "accuracy_diff_ci95": (report.get("finetuned_minus_zero_shot") or {}).get("ci95")}
    dest = root / cfg.version
    files = [f for f in sorted(model.iterdir()) if f.is_file() and f.name != "manifest.json"]
    with atomic_path(dest, is_dir=True) as tmp:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        write_json(tmp / "nli_report.json", card)
        write_manifest(tmp, "nli_publish", cfg, {"files": len(files)})  # with each file's sha256
    if cfg.current:
        link = root / "current"
        tmp_link = root / f".current.tmp-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(cfg.version)
        os.replace(tmp_link, link)  # atomic: a reader sees the old version or the new one
    print(f"published {dest} (accuracy {card['accuracy']})")
    return {"path": str(dest), "version": cfg.version, "files": len(files), "accuracy": card["accuracy"]}


if __name__ == "__main__":
    from steps._cli import main

    main(NliPublishConfig, run, __doc__)
