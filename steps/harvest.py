"""Harvest: build a knowledge base of documents with stable ids, for question generation and retrieval.

Sources (`sources`, default k8s-api):
  k8s-api  The Kubernetes API reference carried by the `kubernetes` Python client (28.1.0 is
           Kubernetes v1.28). One document per described field of every generated model class
           (title `Deployment.spec.replicas`, id `k8s/apps/v1/DeploymentSpec/replicas`) and one
           overview per class (id `k8s/apps/v1/DeploymentSpec`). The client's files are read as
           text and parsed with `ast`, never imported: the package pins urllib3<2, so it is
           installed with `pip install --no-deps kubernetes==28.1.0`, or `k8s_source` points at
           its wheel file or an unpacked copy.
  folder   Markdown/.txt files under `docs_dir`, one document per heading section
           (id `folder/<relative path>#<heading slug>`, title = the heading).
  cluster  The live cluster through lightkube (kubeconfig/kube_context, or the pod's ServiceAccount):
           nodes, events, troubled pods with their log tails, ConfigMaps, Deployments, Jobs, Argo
           Workflows (id `cluster/<Kind>/<namespace>/<name>`); never Secrets; see steps.harvest_cluster.
  dump     The same from a folder of `kubectl get -o json` and `<ns>_<pod>_<container>.log` files.
  With `prometheus_url`, each of `prometheus_queries` (name: PromQL) adds a document.

Every document carries a `content_hash` (title and text); with `previous` (an earlier output folder)
unchanged documents are carried over as they were, and the manifest counts new/changed/unchanged/removed.

Every document carries exactly one topic (see TOPICS); `topics` keeps only the chosen ones.

Output folder (built under a temporary name and renamed into place when complete):
  docs.jsonl     one document per line, sorted by id
  topics.json    documents and characters per topic, with each topic's description
  manifest.json  config, counts, timings, versions, and where the API reference was read from

Examples:
  python -m steps.harvest --out runs/kb
  python -m steps.harvest --out runs/kb-net "topics=[services-networking, ingress]"
  python -m steps.harvest --out runs/kb "sources=[k8s-api, folder]" --docs-dir docs
  python -m steps.harvest --out runs/kb --k8s-source wheels/kubernetes-28.1.0-py2.py3-none-any.whl
  python -m steps.harvest --out runs/kb topics=nope     # fails at once and lists the valid topics
  python -m steps.harvest --out runs/live "sources=[cluster]" --previous runs/live-before
  python -m steps.harvest --out runs/live "sources=[dump]" --dump-dir cluster-dump
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steps._cli import main
from steps._io import atomic_path, write_json, write_jsonl, write_manifest

from steps.k8s_reference import TOPICS, k8s_documents, load_k8s_files, read_utf8

DOC_SUFFIXES = (".md", ".markdown", ".txt")


def validate_topics(names: str | Iterable[str] | None) -> list[str]:
    """Check topic names before any work starts; return them (all topics for "all"/None).

    Accepts a list, or one string with names separated by commas or spaces.
    """
    if names is None:
        return list(TOPICS)
    if isinstance(names, str):
        names = re.split(r"[,\s]+", names)
    wanted = [str(n).strip() for n in names if str(n).strip()]
    if not wanted:
        raise ValueError(f"topics is empty; use topics=all or some of: {', '.join(TOPICS)}")
    if "all" in wanted:
        return list(TOPICS)
    unknown = [n for n in wanted if n not in TOPICS]
    if unknown:
        raise ValueError(
            f"unknown topic(s) {', '.join(repr(n) for n in unknown)}; valid topics are: {', '.join(TOPICS)}. "
            "Set topics to some of these (e.g. \"topics=[pods-containers, ingress]\") or to all"
        )
    return list(dict.fromkeys(wanted))


class HarvestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="output folder (docs.jsonl, topics.json, manifest.json); replaced atomically")
    sources: list[Literal["k8s-api", "folder", "cluster", "dump"]] = Field(
        default=["k8s-api"],
        description="where documents come from: k8s-api (the Kubernetes API reference in the kubernetes "
        "client), folder (Markdown/.txt files under docs_dir), cluster (the live cluster's objects and "
        "logs) and/or dump (kubectl get -o json and *.log files under dump_dir)",
    )
    docs_dir: Path | None = Field(default=None, description="folder of .md/.markdown/.txt files (source 'folder')")
    k8s_source: Path | None = Field(
        default=None,
        description="kubernetes client wheel (.whl) or unpacked folder to read the API reference from; "
        "default: the installed kubernetes package (pip install --no-deps kubernetes==28.1.0)",
    )
    topics: list[str] = Field(
        default=["all"], description=f"topics to keep, or all; one of: {', '.join(TOPICS)}"
    )
    min_chars: int = Field(default=40, ge=0, description="skip documents whose text is shorter than this")
    kind_docs: bool = Field(
        default=True, description="also write one overview document per API class (fields, where it is used)"
    )

    kubeconfig: str | None = Field(default=None, description="source cluster: kubeconfig file (default: "
                                   "$KUBECONFIG, ~/.kube/config, or the pod's ServiceAccount)")
    kube_context: str | None = Field(default=None, description="source cluster: kubeconfig context")
    namespaces: list[str] = Field(default=["all"], description="source cluster: namespaces to read, or all")
    log_lines: int = Field(default=50, ge=0, description="cluster/dump: last lines of each container's log")
    max_pods: int = Field(default=20, ge=0, description="cluster/dump: at most this many pods' logs (pods not "
                          "Running and Ready, or restarted; the most recently changed first)")
    value_chars: int = Field(default=200, ge=1, description="cluster/dump: ConfigMap values are cut to this length")
    chunk_size: int = Field(default=200, ge=1, description="source cluster: objects per list request (paged)")
    timeout_s: float = Field(default=10.0, gt=0, description="cluster/Prometheus: timeout of each request")
    dump_dir: Path | None = Field(default=None, description="source dump: folder of kubectl get -o json and "
                                  "<namespace>_<pod>_<container>.log files")
    prometheus_url: str | None = Field(default=None, description="Prometheus server; each prometheus_queries "
                                       "entry becomes a document")
    prometheus_queries: dict[str, str] = Field(default={}, description="name: PromQL instant query")
    previous: Path | None = Field(default=None, description="an earlier harvest's output folder: unchanged "
                                  "documents are carried over and counted")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, v: Any) -> Any:
        return [n for n in re.split(r"[,\s]+", v.strip()) if n] if isinstance(v, str) else v

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, v: Any) -> Any:
        return re.split(r"[,\s]+", v.strip()) if isinstance(v, str) else v

    @field_validator("topics")
    @classmethod
    def _known_topics(cls, v: list[str]) -> list[str]:
        names = validate_topics(v)
        return ["all"] if any(n.strip() == "all" for n in v) else names

    @model_validator(mode="after")
    def _folder_needs_dir(self) -> "HarvestConfig":
        if not self.sources:
            raise ValueError("sources is empty; use sources=[k8s-api] and/or add folder with docs_dir")
        if "folder" in self.sources and self.docs_dir is None:
            raise ValueError("sources includes 'folder' but docs_dir is not set; set docs_dir=path/to/docs")
        if "dump" in self.sources and self.dump_dir is None:
            raise ValueError("sources includes 'dump' but dump_dir is not set; set dump_dir=path/to/dump")
        if self.prometheus_queries and not self.prometheus_url:
            raise ValueError("prometheus_queries is set but prometheus_url is not; set prometheus_url=http://HOST:9090")
        self.sources = list(dict.fromkeys(self.sources))
        return self


# --------------------------------------------------------------------------- a folder of documents


def read_kb(kb: str | Path, fields: tuple[str, ...] = ("id", "text")) -> list[dict]:
    """The documents of a harvest output folder, each checked for the string `fields` a reader needs;
    errors name the folder, or the line and field, and the fix."""
    from steps._io import read_jsonl

    path = Path(kb) / "docs.jsonl"
    if not path.is_file():
        raise ValueError(f"{kb} holds no docs.jsonl ({path} does not exist): kb must be a harvest output folder "
                         "(python -m steps.harvest --out FOLDER)")
    docs = read_jsonl(path)
    for i, d in enumerate(docs, 1):
        missing = [f for f in fields if not isinstance(d.get(f), str)]
        if missing:
            raise ValueError(f"{path}: line {i} has no string field(s) {', '.join(missing)}; every line needs "
                             f"{', '.join(fields)}, as steps.harvest writes them")
    return docs


def slugify(title: str) -> str:
    """GitHub-style anchor: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")
    return slug or "section"


def _heading_text(raw: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # [text](link) -> text
    return re.sub(r"`|\*\*|__", "", text).strip()


def split_sections(text: str) -> tuple[dict[str, Any], list[tuple[str | None, str]]]:
    """Front matter, then (heading or None for the preamble, body) per section.

    ATX headings (`## Title`) and setext headings (a line underlined with === or ---) start a
    section; lines inside fenced code blocks never do.
    """
    lines = text.splitlines()
    meta: dict[str, Any] = {}
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            import yaml

            try:
                loaded = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError as e:
                raise ValueError(f"its front matter is not valid YAML ({e})") from e
            meta = loaded if isinstance(loaded, dict) else {}
            lines = lines[end + 1:]
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    fence = ""
    for line in lines:
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
            sections[-1][1].append(line)
            continue
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if m:
            fence = m.group(1)
            sections[-1][1].append(line)
            continue
        atx = re.match(r"^ {0,3}#{1,6}[ \t]+(.*)$", line)
        if atx:
            sections.append((_heading_text(re.sub(r"[ \t]+#+[ \t]*$", "", atx.group(1))), []))
            continue
        body = sections[-1][1]
        if (re.match(r"^ {0,3}(=+|-+)[ \t]*$", line) and body and body[-1].strip()
                and (len(body) == 1 or not body[-2].strip())
                and not re.match(r"^\s*([-*+>|]|\d+[.)])\s", body[-1])):
            title = body.pop().strip()
            sections.append((_heading_text(title), []))
            continue
        body.append(line)
    return meta, [(title, "\n".join(body).strip()) for title, body in sections]


def folder_documents(docs_dir: Path) -> tuple[list[dict], dict[str, int]]:
    """One document per non-empty heading section of every .md/.markdown/.txt file under docs_dir."""
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        what = "is not a folder" if docs_dir.exists() else "does not exist"
        raise FileNotFoundError(f"docs_dir {docs_dir} {what}; set docs_dir to a folder of .md/.txt files")
    files = sorted(
        (p for p in docs_dir.rglob("*")
         if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
         and not any(part.startswith(".") for part in p.relative_to(docs_dir).parts)),
        key=lambda p: p.relative_to(docs_dir).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"docs_dir {docs_dir} holds no {'/'.join(DOC_SUFFIXES)} files")
    docs = []
    for path in files:
        rel = path.relative_to(docs_dir).as_posix()
        text = read_utf8(path)
        try:
            meta, sections = split_sections(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        topic = str(meta.get("topic") or "")
        if topic and topic not in TOPICS:
            raise ValueError(f"{path}: front matter topic {topic!r} is unknown; valid topics are: {', '.join(TOPICS)}")
        first_dir = rel.split("/", 1)[0] if "/" in rel else ""
        topic = topic or (first_dir if first_dir in TOPICS else "other")
        used: set[str] = set()
        for title, body in sections:
            if title is None:
                anchor, title = "", str(meta.get("title") or path.stem)
            else:
                anchor = base = slugify(title)
                n = 0
                while anchor in used:
                    n += 1
                    anchor = f"{base}-{n}"
                used.add(anchor)
            if not body:
                continue
            docs.append(dict(
                id=f"folder/{rel}" + (f"#{anchor}" if anchor else ""), source="folder", doc_type="section",
                topic=topic, api_group=None, version=None, kind=None, **{"class": None}, field=None, type=None,
                title=title, paths=[], text=body, file=rel,
            ))
    return docs, {"files": len(files), "sections": len(docs)}


# --------------------------------------------------------------------------- the step


def run(cfg: HarvestConfig) -> dict:
    t0 = time.monotonic()
    topics = validate_topics(cfg.topics)
    timings: dict[str, float] = {}
    docs: list[dict] = []
    provenance: dict[str, Any] = {}

    if "k8s-api" in cfg.sources:
        t = time.monotonic()
        src = load_k8s_files(cfg.k8s_source)
        k8s_docs, stats = k8s_documents(src, kind_docs=cfg.kind_docs)
        docs += k8s_docs
        provenance["k8s-api"] = {"kubernetes_client_version": src.version, "api_release": src.release,
                                 "read_from": src.origin, "how": src.how, **stats}
        timings["k8s_api"] = round(time.monotonic() - t, 3)
    if "folder" in cfg.sources:
        t = time.monotonic()
        folder_docs, stats = folder_documents(cfg.docs_dir)
        docs += folder_docs
        provenance["folder"] = {"docs_dir": str(Path(cfg.docs_dir).resolve()), **stats}
        timings["folder"] = round(time.monotonic() - t, 3)
    if "cluster" in cfg.sources:
        from steps.harvest_cluster import cluster_documents

        t = time.monotonic()
        found, provenance["cluster"] = cluster_documents(
            cfg.kubeconfig, cfg.kube_context, cfg.namespaces, cfg.log_lines, cfg.max_pods, cfg.value_chars,
            cfg.chunk_size, cfg.timeout_s)
        docs += found
        timings["cluster"] = round(time.monotonic() - t, 3)
    if "dump" in cfg.sources:
        from steps.harvest_cluster import dump_documents

        t = time.monotonic()
        found, provenance["dump"] = dump_documents(cfg.dump_dir, cfg.log_lines, cfg.max_pods, cfg.value_chars)
        docs += found
        timings["dump"] = round(time.monotonic() - t, 3)
    if cfg.prometheus_url and cfg.prometheus_queries:
        from steps.harvest_cluster import prometheus_documents

        t = time.monotonic()
        found, provenance["prometheus"] = prometheus_documents(cfg.prometheus_url, cfg.prometheus_queries,
                                                               cfg.timeout_s)
        docs += found
        timings["prometheus"] = round(time.monotonic() - t, 3)

    ids = Counter(d["id"] for d in docs)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        raise RuntimeError(f"duplicate document ids {dupes[:5]}: two sources or classes map to one id")
    long_enough = [d for d in docs if len(d["text"]) >= cfg.min_chars]
    harvested = Counter(d["topic"] for d in long_enough)  # per topic, before the topic filter
    kept = sorted((d for d in long_enough if d["topic"] in topics), key=lambda d: d["id"])
    from steps.harvest_cluster import compare_previous, content_hash

    for d in kept:
        d["chars"] = len(d["text"])
        d["content_hash"] = content_hash(d)
    changes = None
    if cfg.previous is not None:
        kept, provenance["previous"], changes = compare_previous(kept, cfg.previous)

    per_topic = {
        name: {
            "description": TOPICS[name]["description"],
            "selected": name in topics,
            "docs": sum(1 for d in kept if d["topic"] == name),
            "chars": sum(d["chars"] for d in kept if d["topic"] == name),
            "harvested": harvested.get(name, 0),
        }
        for name in TOPICS
    }
    counts = {
        "docs": len(kept),
        "chars": sum(d["chars"] for d in kept),
        "by_source": dict(sorted(Counter(d["source"] for d in kept).items())),
        "by_doc_type": dict(sorted(Counter(d["doc_type"] for d in kept).items())),
        "by_topic": {n: v["docs"] for n, v in per_topic.items() if v["selected"]},
        "skipped_too_short": len(docs) - len(long_enough),
        "skipped_other_topics": len(long_enough) - len(kept),
    }
    if changes is not None:
        counts["incremental"] = {k: len(v) for k, v in changes.items()}
    with atomic_path(cfg.out, is_dir=True) as tmp:
        write_jsonl(tmp / "docs.jsonl", kept)
        write_json(tmp / "topics.json", {"order": list(TOPICS), "selected": topics, "topics": per_topic})
        if changes is not None:
            write_json(tmp / "changes.json", changes)  # ids per new/changed/unchanged/removed, for an index step
        timings["total"] = round(time.monotonic() - t0, 3)
        write_manifest(tmp, "harvest", cfg, counts=counts, timings=timings, packages=["pydantic"],
                       extra={"sources": provenance})
    return {"out": str(cfg.out), **{k: counts[k] for k in ("docs", "chars", "by_source", "by_doc_type", "by_topic")}}


if __name__ == "__main__":
    main(HarvestConfig, run, __doc__)
