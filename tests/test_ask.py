"""steps.ask and `kubellm ask`: one answer from retrieved chunks, with its sources, over real HTTP."""

from __future__ import annotations

import json

import pytest
from tests.faultserver import fault_server_module, server  # noqa: F401 - fixtures

from steps import ask
from workflows import cli

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    from steps import harvest, index

    root = tmp_path_factory.mktemp("ask")
    harvest.run(harvest.HarvestConfig(out=root / "kb", topics=["ingress"]))
    index.run(index.IndexConfig(kb=root / "kb", out=root / "idx", chunk_words=40, overlap_words=8))
    return root / "idx"


def test_answer_with_sources_from_the_index(server, idx, capsys):
    q = "Which secret holds the TLS certificate of an ingress?"
    server.replies[q].append("The secret named in spec.tls[].secretName [1].")
    res = ask.run(ask.AskConfig(question=q, index=idx, model="tiny", url=server.url, top_k=3))
    assert res["answer"] == "The secret named in spec.tls[].secretName [1]."
    assert [s["n"] for s in res["sources"]] == [1, 2, 3]
    assert "k8s/networking.k8s.io/v1/IngressTLS/secretName" in [s["doc_id"] for s in res["sources"]]
    (req,) = server.completions()
    user = req.body["messages"][-1]["content"]
    for s in res["sources"]:  # the model saw exactly the sources it lists
        assert f"[{s['n']}] {s['heading']}\n{s['text']}" in user
    # the CLI: JSON when piped
    assert cli.main(["ask", q, "--index", str(idx), "--model", "tiny", "--url", server.url, "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["sources"]) == 2 and out["answer"]


def test_bad_input_is_one_line(server, idx, tmp_path):
    with pytest.raises(SystemExit, match=r"ask: index .* holds no config.json: give the output folder"):
        cli.main(["ask", "q?", "--index", str(tmp_path), "--url", server.url, "--model", "tiny"])
    with pytest.raises(SystemExit, match=r"ask: question: .*the question is empty"):
        cli.main(["ask", "  ", "--index", str(idx), "--url", server.url])
    with pytest.raises(SystemExit, match=r"ask: model 'my-model' has no --url"):
        cli.main(["ask", "q?", "--index", str(idx), "--model", "my-model"])
    server.always_containing["q fails?"] = "500"
    with pytest.raises(SystemExit, match=r"ask: the model endpoint failed"):
        cli.main(["ask", "q fails?", "--index", str(idx), "--url", server.url, "--model", "tiny"])
