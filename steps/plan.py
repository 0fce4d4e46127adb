"""plan: check an experiment's models and studies before any server starts, and fix its timestamp.

Every study is validated and expanded (steps.study) into `out/<study>/`; the models are parsed
into the list the workflow fans out over. Small values go to `params_dir` as files, which become
Argo output parameters: `models` (JSON list of {name, slug, gpus, tp, cpu, memory}), `studies` (JSON
list of names) and `timestamp` (the run's folder name, `{experiment}/{model}/{timestamp}/`).

    python -m steps.plan --experiment demo --models smollm2-135m --studies study1,study2 \\
        --out /tmp/plan --params-dir /tmp/plan-params
    # per-model resources: a JSON list instead of names
    python -m steps.plan ... --models '[{"name": "google/gemma-2-9b-it", "gpus": 1, "memory": "40Gi"}]'

A study is a bundled name (study1, study2: workflows/studies/) or a path to a study YAML file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steps._io import write_json, write_metrics

BUNDLED = Path(__file__).resolve().parents[1] / "workflows" / "studies"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PlanConfig(BaseModel):
    experiment: str = Field(description="experiment name: the top folder (S3 prefix or PVC path) of its outputs")
    models: str = Field(description="comma-separated model names, or a JSON list of {name, gpus, cpu, memory}")
    studies: str = Field(description="comma-separated study names (bundled) or study YAML paths")
    out: str = Field(description="folder for the expanded studies, one subfolder per study")
    params_dir: str | None = Field(None, description="write models / studies / timestamp here, one file each")
    limit: int = Field(0, ge=0, description="use only the first N rows of every study CSV (0 = all)")
    gpus: int = Field(0, ge=0, description="default GPUs per model server")
    cpu: str = Field("2", description="default CPU request/limit per model server")
    memory: str = Field("12Gi", description="default memory request/limit per model server")
    timestamp: str | None = Field(None, description="the run's timestamp (default: now, UTC, like 20261123T101500Z)")


def slug(name: str) -> str:
    """A model name as a folder/file name part: 'google/gemma-2-2b-it' -> 'google--gemma-2-2b-it'."""
    s = name.strip().replace("/", "--").replace(":", "-")
    if not _SLUG.match(s) or s == "report":
        raise ValueError(f"model name {name!r} cannot be used in file names ({s!r}); use letters, digits, . _ - and /")
    return s


def parse_models(raw: str, gpus: int, cpu: str, memory: str) -> list[dict[str, Any]]:
    raw = raw.strip()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"models: not valid JSON ({e.msg} at character {e.pos}); give names separated by "
                             "commas, or a JSON list of {\"name\": ..., \"gpus\": ...}") from e
    else:
        items = [x.strip() for x in raw.split(",") if x.strip()]
    if not items:
        raise ValueError("models: the list is empty; name at least one model")
    out = []
    for i, it in enumerate(items):
        it = {"name": it} if isinstance(it, str) else it
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            raise ValueError(f"models[{i}]: need a name (a string, or an object with \"name\"); got {it!r}")
        unknown = set(it) - {"name", "gpus", "cpu", "memory"}
        if unknown:
            raise ValueError(f"models[{i}] ({it['name']}): unknown key(s) {sorted(unknown)}; allowed: name, gpus, cpu, memory")
        try:
            n_gpus = int(it.get("gpus", gpus))
        except (TypeError, ValueError):
            raise ValueError(f"models[{i}] ({it['name']}): gpus must be a whole number (got {it.get('gpus')!r})") from None
        # tp: tensor-parallel size, one shard per GPU (1 on CPU)
        m = {"name": it["name"], "slug": slug(it["name"]), "gpus": n_gpus, "tp": max(1, n_gpus),
             "cpu": str(it.get("cpu", cpu)), "memory": str(it.get("memory", memory))}
        out.append(m)
    dup = sorted({m["slug"] for m in out if [x["slug"] for x in out].count(m["slug"]) > 1})
    if dup:
        raise ValueError(f"models: {dup} named more than once")
    return out


def study_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    bundled = BUNDLED / f"{name}.yaml"
    if not bundled.exists():
        have = sorted(x.stem for x in BUNDLED.glob("*.yaml"))
        raise ValueError(f"study {name!r} is neither a YAML file nor a bundled study ({', '.join(have)})")
    return bundled


def check_studies(names: list[str]) -> list[tuple[str, Path]]:
    """(study name, YAML path) of each study, after loading it with its CSV: what the experiment runs."""
    from steps import study as st

    if not names:
        raise ValueError("studies: the list is empty; name at least one study")
    checked = []
    for name in names:
        path = study_path(name)
        if not path.is_file():
            raise ValueError(f"study {name!r}: no such file {path}; give a study YAML path that exists or a "
                             f"bundled study ({', '.join(sorted(x.stem for x in BUNDLED.glob('*.yaml')))})")
        s, _, _ = st.load_study(path)
        if not s.probabilities or s.extract is None:
            raise ValueError(f"{path}: an experiment study needs `probabilities` and `extract` sections "
                             "(the pipeline scores candidates and extracts structured answers for every study)")
        checked.append((s.name, path))
    study_names = [n for n, _ in checked]
    if len(set(study_names)) != len(study_names):
        raise ValueError(f"studies: names repeat ({study_names})")
    return checked


def run(cfg: PlanConfig) -> dict:
    from steps import study as st

    slug(cfg.experiment)  # the same rule: it is a folder name
    models = parse_models(cfg.models, cfg.gpus, cfg.cpu, cfg.memory)
    names = [x.strip() for x in cfg.studies.split(",") if x.strip()]
    checked = check_studies(names)  # every study before writing any
    study_names = [n for n, _ in checked]
    counts: dict[str, Any] = {}
    for sname, path in checked:
        counts[sname] = st.run(st.StudyConfig(study=str(path), out=str(Path(cfg.out) / sname),
                                              limit=cfg.limit or None))
    ts = cfg.timestamp or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_json(Path(cfg.out) / "plan.json", {"experiment": cfg.experiment, "timestamp": ts, "models": models,
                                             "studies": study_names, "counts": counts})
    write_metrics(cfg.params_dir, {"models": json.dumps(models), "studies": json.dumps(study_names), "timestamp": ts})
    return {"experiment": cfg.experiment, "timestamp": ts, "models": [m["slug"] for m in models], "studies": counts}


if __name__ == "__main__":
    from steps._cli import main

    main(PlanConfig, run, __doc__)
