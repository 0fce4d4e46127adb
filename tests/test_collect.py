"""steps.collect on a realistic experiment root built without any server: the prepared studies are
made by steps.study for real, the step folders are fabricated in the real row formats (query's
answers, extract's records, probabilities' summarize + wide_rows) with real manifests."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from steps import collect
from steps._io import read_jsonl, sha256_file, write_csv, write_jsonl, write_manifest
from steps.probabilities import summarize, wide_rows
from steps.query import csv_row
from steps.study import StudyConfig
from steps.study import run as run_study

STUDIES_DIR = Path(__file__).resolve().parents[1] / "workflows" / "studies"
TS = "20261123T101500Z"
MODELS = ["smollm2-135m", "org/model-b"]  # the second one fails a little everywhere
B = "org--model-b"
FAILED_ITEM = "apples-1-belief_s2"  # model b's failed probabilities item (study1)


def logprobs_for(model: str, item_id: str, n: int) -> list[float]:
    rng = random.Random(f"{model}|{item_id}")
    return [rng.uniform(-9.0, -0.5) for _ in range(n)]


def fake_record(schema: dict, i: int) -> dict:
    out = {}
    for name, spec in schema["properties"].items():
        if "enum" in spec:
            out[name] = spec["enum"][i % len(spec["enum"])]
        elif spec.get("type") == "integer":
            out[name] = spec.get("minimum", 0) + i
        else:
            out[name] = f"It was good ({i})"
    return out


def fabricate(root: Path, prepared: Path, model: str, study: str) -> None:
    """The three step folders of one model x study, as steps.query/extract/probabilities write them."""
    sl = collect.slug(model)
    base = root / sl / TS / study
    weak = model == MODELS[1]

    raw = base / "raw"
    answers = []
    for i, p in enumerate(read_jsonl(prepared / study / "prompts.jsonl")):
        if weak and study == "study1" and i == 0:
            answers.append({**p, "model": model, "answer": None, "error": "HTTP 503: overloaded", "status": 503,
                            "attempts": 5, "latency_s": 9.0})
        else:
            answers.append({**p, "model": model, "answer": f"It was good. {i}", "finish_reason": "stop", "attempts": 1,
                            "prompt_tokens": 80, "completion_tokens": 12, "latency_s": 0.4, "error": None})
    write_jsonl(raw / "answers.jsonl", answers)
    write_jsonl(raw / "log.jsonl", [{"id": a["id"], "request": "x", "answer": a["answer"]} for a in answers])
    write_csv(raw / f"{sl}_{study}_raw_responses.csv", [csv_row(a) for a in answers])
    failed = sum(1 for a in answers if a["error"])
    write_manifest(raw, "query", {"input": str(prepared / study), "model": model, "max_failed_fraction": 0.5,
                                  "csv_name": f"{sl}_{study}_raw_responses.csv"},
                   counts={"rows": len(answers), "answered": len(answers) - failed, "failed": failed},
                   timings={"wall": 11.0 if weak else 7.0}, packages=["httpx"],
                   extra={"endpoint": f"http://{sl}:8000", "served_model": model,
                          "server_version": "0.9.2" if weak else "0.8.5"})

    structured = base / "structured"
    schema = json.loads((prepared / study / "schema.json").read_text())["schema"]
    extracted, reasons = [], {}
    for i, a in enumerate(answers):
        if a["error"]:
            reason, err = "no-response", "the query step has no answer for this row"
        elif (study == "study2" and i == 1) or (weak and study == "study1" and i == 2):
            reason, err = "validation", "Assessment: Input should be 'terrible', 'bad', 'good' or 'amazing' (got 'fine')"
        else:
            reason, err = None, None
        rec = {k: None for k in schema["properties"]} if reason else fake_record(schema, i)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
        extracted.append({**a, **rec, "extract_ok": reason is None, "extract_failure": reason, "extract_error": err,
                          "extract_attempts": 2 if reason else 1, "extract_raw": json.dumps(rec)})
    write_jsonl(structured / "extracted.jsonl", extracted)
    write_csv(structured / f"{sl}_{study}_structured.csv", extracted)
    bad = sum(reasons.values())
    write_manifest(structured, "extract", {"input": str(raw), "csv_name": f"{sl}_{study}_structured.csv"},
                   counts={"rows": len(extracted), "valid": len(extracted) - bad, "failed": bad,
                           "failed_by_reason": reasons, "mode_used": "json_schema"},
                   timings={"wall": 5.0}, packages=["httpx", "pydantic"],
                   extra={"endpoint": "http://extractor:8000", "extractor_model": "extractor-7b"})

    probs = base / "probabilities"
    rows = []
    for it in read_jsonl(prepared / study / "items.jsonl"):
        if weak and it["id"] == FAILED_ITEM:
            rows.append({**it, "model": model, "chat": True, "error": "HTTP 500: engine died", "latency_s": 1.0})
            continue
        lps = logprobs_for(model, it["id"], len(it["candidates"]))
        n_tok = [len(c) // 3 + 1 for c in it["candidates"]]
        rows.append({**it, "model": model, "chat": True, "logprobs": lps, "n_tokens": n_tok,
                     **summarize(it["candidates"], lps, n_tok, it.get("values")), "latency_s": 0.2, "error": None})
    write_jsonl(probs / "probabilities.jsonl", rows)
    write_csv(probs / f"{sl}_{study}_probabilities.csv", wide_rows(rows))
    nf = sum(1 for r in rows if r["error"])
    write_manifest(probs, "probabilities", {"input": str(prepared / study), "model": model,
                                            "csv_name": f"{sl}_{study}_probabilities.csv"},
                   counts={"rows": len(rows), "scored": len(rows) - nf, "failed": nf},
                   timings={"wall": 3.0}, packages=["httpx", "transformers"],
                   extra={"endpoint": f"http://{sl}:8000", "served_model": model})


def build(tmp: Path) -> tuple[Path, Path]:
    prepared, root = tmp / "prepared", tmp / "exp1"
    for s in ("study1", "study2"):
        run_study(StudyConfig(study=str(STUDIES_DIR / f"{s}.yaml"), out=str(prepared / s), limit=3))
        for m in MODELS:
            fabricate(root, prepared, m, s)
    return root, prepared


def config(root: Path, prepared: Path, out: Path, **kw) -> collect.CollectConfig:
    return collect.CollectConfig(root=str(root), prepared=str(prepared), experiment="exp1", timestamp=TS,
                                 models=json.dumps(MODELS), studies="study1,study2", out=str(out), **kw)


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("collect")
    root, prepared = build(tmp)
    out = tmp / "report"
    counts = collect.run(config(root, prepared, out, metrics_dir=str(tmp / "metrics")))
    return {"root": root, "prepared": prepared, "out": out, "counts": counts, "tmp": tmp,
            "manifest": json.loads((out / "manifest.json").read_text())}


def softmax_by_hand(lps: list[float]) -> list[float]:
    es = [math.exp(x) for x in lps]
    return [e / sum(es) for e in es]


# ----------------------------------------------------------------------------- pure parts


def test_slug_and_config_parsing():
    assert collect.slug("google/gemma-2-2b-it") == "google--gemma-2-2b-it"
    assert collect.slug("smollm2-135m") == "smollm2-135m"
    assert collect.slug("openai:gpt-4o-mini") == "openai-gpt-4o-mini"
    for bad in ("a b", "report", "../x", ""):
        with pytest.raises(ValueError, match="cannot be used in file names"):
            collect.slug(bad)
    cfg = collect.CollectConfig(root="r", prepared="p", experiment="e", timestamp=TS, out="o",
                                models='[{"name": "google/gemma-2-2b-it", "endpoint": "http://g:8000"}, "smollm2-135m",'
                                       ' {"name": "x/y", "slug": "custom"}]',
                                studies='["study1", "study2"]')
    assert [(m.name, m.slug) for m in cfg.models] == [("google/gemma-2-2b-it", "google--gemma-2-2b-it"),
                                                      ("smollm2-135m", "smollm2-135m"), ("x/y", "custom")]
    assert cfg.models[0].model_dump()["endpoint"] == "http://g:8000"  # extra keys are kept for the manifest
    assert cfg.studies == ["study1", "study2"]
    assert collect.CollectConfig(root="r", prepared="p", experiment="e", timestamp=TS, out="o",
                                 models="a/b, c", studies="study1").models[0].slug == "a--b"
    with pytest.raises(ValueError, match="repeat"):
        collect.CollectConfig(root="r", prepared="p", experiment="e", timestamp=TS, out="o",
                              models=["a/b", "a--b"], studies="study1")
    with pytest.raises(ValueError, match="not a plain folder name"):
        collect.CollectConfig(root="r", prepared="p", experiment="e", timestamp=TS, out="o",
                              models=[{"name": "m", "slug": "a/b"}], studies="study1")


def test_candidate_grid_rule():
    g = collect.candidate_grid([" was terrible", " was bad", " was good", " was amazing",
                                " wasn't terrible", " wasn't bad", " wasn't good", " wasn't amazing"])
    assert g["rows"] == ["was", "wasn't"] and g["columns"] == ["terrible", "bad", "good", "amazing"]
    assert g["index"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert collect.candidate_grid(["yes", "no"]) is None  # one word each
    assert collect.candidate_grid([" was good", " was bad", " wasn't good"]) is None  # not a full grid
    assert collect.candidate_grid(["a x", "a y"]) is None  # one first word only


# ----------------------------------------------------------------------------- the whole step


def test_publishes_every_csv_byte_for_byte(collected):
    root = collected["root"]
    published = collected["manifest"]["published"]
    assert len(published) == 2 * 2 * 3 == collected["counts"]["published_csvs"]
    for m in MODELS:
        sl = collect.slug(m)
        for s in ("study1", "study2"):
            for folder, kind in (("raw", "raw_responses"), ("structured", "structured"),
                                 ("probabilities", "probabilities")):
                dest = root / sl / TS / f"{sl}_{s}_{kind}.csv"
                src = root / sl / TS / s / folder / f"{sl}_{s}_{kind}.csv"
                assert dest.read_bytes() == src.read_bytes()
                rel = f"{sl}/{TS}/{sl}_{s}_{kind}.csv"
                assert published[rel]["sha256"] == sha256_file(dest)
                assert collected["manifest"]["results"][sl][s]["published"][kind]["sha256"] == sha256_file(dest)
    assert not list(root.rglob(".*.tmp-*"))  # no temp files left behind


def test_manifest_counts_failures_inputs_and_versions(collected):
    man, prepared = collected["manifest"], collected["prepared"]
    assert man["step"] == "collect" and man["experiment"] == "exp1" and man["timestamp"] == TS
    assert collected["counts"] == man["counts"]
    want = {"models": 2, "studies": 2, "missing": 0, "query_failed": 1, "extract_failed": 2 + 1 + 1,
            "probabilities_failed": 1, "failed_rows": 6}
    assert {k: man["counts"][k] for k in want} == want
    metrics = collected["tmp"] / "metrics"
    assert [(metrics / k).read_text() for k in ("models", "studies", "failed")] == ["2", "2", "6"]

    b1 = man["results"][B]["study1"]["steps"]
    assert (b1["query"]["rows"], b1["query"]["failed"]) == (3, 1)
    assert b1["query"]["failed_rows"][0]["error"] == "HTTP 503: overloaded"
    assert (b1["extract"]["valid"], b1["extract"]["failed"]) == (1, 2)
    assert b1["extract"]["failed_by_reason"] == {"no-response": 1, "validation": 1}
    assert b1["extract"]["extractor_model"] == "extractor-7b"
    assert b1["probabilities"]["failed_items"] == [{"id": FAILED_ITEM, "error": "HTTP 500: engine died"}]
    assert (b1["probabilities"]["items"], b1["probabilities"]["scored"]) == (15, 14)
    assert man["results"]["smollm2-135m"]["study1"]["steps"]["extract"]["failed"] == 0
    assert man["results"]["smollm2-135m"]["study1"]["timings_s"] == {"query": 7.0, "extract": 5.0, "probabilities": 3.0}
    assert man["results"][B]["study1"]["timings_s"]["query"] == 11.0

    rows = read_jsonl(collected["root"] / B / TS / "study2" / "probabilities" / "probabilities.jsonl")
    cov = [r["coverage"] for r in rows]
    assert man["results"][B]["study2"]["steps"]["probabilities"]["mean_coverage"] == pytest.approx(sum(cov) / len(cov))

    models = {m["slug"]: m for m in man["models"]}
    assert models[B]["name"] == "org/model-b" and models[B]["served_models"] == ["org/model-b"]
    assert models[B]["endpoints"] == [f"http://{B}:8000"] and models[B]["server_versions"] == ["0.9.2"]

    for s in ("study1", "study2"):
        st, pm = man["studies"][s], json.loads((prepared / s / "manifest.json").read_text())
        assert st["input_hashes"]["study_sha256"] == sha256_file(STUDIES_DIR / f"{s}.yaml") == pm["study_sha256"]
        assert st["input_hashes"]["source_csv_sha256"] == sha256_file(STUDIES_DIR / f"{s}.csv")
        assert st["system_prompt"] and "{" in st["prompt"] and st["sampling"]["max_tokens"] > 0
        assert st["extract"]["schema"]["type"] == "object"
    belief = man["studies"]["study1"]["questions"][0]
    assert belief["name"] == "belief" and belief["states"] == [0, 1, 2, 3]
    assert belief["candidates"] == [f"{10 * i}%" for i in range(11)] and belief["values"][-1] == 100.0
    assert man["studies"]["study2"]["questions"][0]["candidates"][4] == " wasn't terrible"

    assert man["versions"]["httpx"] and "transformers" in man["versions"] and man["versions"]["python"]
    assert man["warnings"] == []
    for name, f in man["files"].items():
        assert sha256_file(collected["out"] / name) == f["sha256"]


def test_heatmap_matrix_is_the_mean_over_scored_items(collected):
    out, root = collected["out"], collected["root"]
    mats = json.loads((out / "matrices.json").read_text())
    belief = mats["study1"]["belief"]
    assert belief["kind"] == "states" and belief["states"] == [0, 1, 2, 3]
    items = read_jsonl(collected["prepared"] / "study1" / "items.jsonl")
    for m in MODELS:
        sl = collect.slug(m)
        for k, state in enumerate([0, 1, 2, 3]):
            ids = [it["id"] for it in items if it["label"] == f"belief_s{state}"]
            assert len(ids) == 3
            ids = [i for i in ids if not (m == MODELS[1] and i == FAILED_ITEM)]
            by_hand = [softmax_by_hand(logprobs_for(m, i, 11)) for i in ids]
            want = [sum(p[j] for p in by_hand) / len(by_hand) for j in range(11)]
            assert belief["models"][sl]["matrix"][k] == pytest.approx(want, abs=1e-12)
            assert belief["models"][sl]["n"][k] == len(ids)
    assert belief["models"][B]["n"] == [3, 3, 2, 3]  # the failed item is left out, not counted as zeros
    assert (out / "study1_belief_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "study1_belief_expected.png").exists()

    reply = mats["study2"]["reply"]
    rows = [r for r in read_jsonl(root / B / TS / "study2" / "probabilities" / "probabilities.jsonl")]
    wasnt_good = sum(softmax_by_hand(r["logprobs"])[6] for r in rows) / len(rows)
    assert reply["models"][B]["mean"][6] == pytest.approx(wasnt_good, abs=1e-12)
    assert reply["grid"]["rows"] == ["was", "wasn't"]
    assert reply["grid"]["columns"] == ["terrible", "bad", "good", "amazing"]
    assert reply["grid"]["models"][B][1][2] == pytest.approx(wasnt_good, abs=1e-12)
    assert "grid" not in mats["study1"]["knowledge"]
    for f in ("study1_knowledge_bars.png", "study2_reply_bars.png", "study2_reply_grid.png", "extraction.png"):
        assert (out / f).exists(), f


def test_report_links_and_embeds_every_figure(collected):
    out, man = collected["out"], collected["manifest"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == len(man["figures"]) == 6
    for name in pngs:
        assert f"]({name})" in md
    assert page.count("src='data:image/png;base64,") == len(pngs) and ".png'" not in page
    assert "| org/model-b | study1 | 3 | 1 | 14 | 0.557 |" in md
    assert "Missing" not in md


def test_failed_rows_per_model_and_study_in_report_md_and_json(collected):
    out, man = collected["out"], collected["manifest"]
    md = (out / "report.md").read_text()
    table = md[md.index("## Failed rows per model and study"):md.index("## Figures")]
    assert "| model | study | query | extract | extract failed by reason | probabilities |" in table
    assert "| smollm2-135m | study1 | 0 of 3 | 0 of 3 | none | 0 of 15 |" in table
    assert "| smollm2-135m | study2 | 0 of 3 | 1 of 3 | validation 1 | 0 of 3 |" in table
    assert "| org/model-b | study1 | 1 of 3 | 2 of 3 | no-response 1, validation 1 | 1 of 15 |" in table
    assert "Failed rows per model and study" in (out / "report.html").read_text()

    report = json.loads((out / "report.json").read_text())
    assert report["experiment"] == "exp1" and report["counts"] == man["counts"]
    b1 = next(r for r in report["failed"] if r["slug"] == B and r["study"] == "study1")
    assert b1 == {"model": "org/model-b", "slug": B, "study": "study1",
                  "query": {"rows": 3, "failed": 1, "max_failed_fraction": 0.5},
                  "extract": {"rows": 3, "failed": 2, "max_failed_fraction": None,
                              "failed_by_reason": {"no-response": 1, "validation": 1}},
                  "probabilities": {"rows": 15, "failed": 1, "max_failed_fraction": None}}
    assert len(report["failed"]) == len(report["results"]) == 4
    assert man["results"][B]["study1"]["failed"] == {k: b1[k] for k in ("query", "extract", "probabilities")}
    assert "report.json" in man["files"]


def test_failed_counts_come_from_the_step_manifests(tmp_path):
    root, prepared = build(tmp_path)
    raw = root / "smollm2-135m" / TS / "study2" / "raw"
    man = json.loads((raw / "manifest.json").read_text())
    man["counts"].update(answered=1, failed=2)  # what the step counted when it ran, whatever the rows say now
    (raw / "manifest.json").write_text(json.dumps(man))
    counts = collect.run(config(root, prepared, tmp_path / "report"))
    assert counts["query_failed"] == 1 + 2
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    row = next(r for r in report["failed"] if r["slug"] == "smollm2-135m" and r["study"] == "study2")
    assert row["query"] == {"rows": 3, "failed": 2, "max_failed_fraction": 0.5}
    assert "| smollm2-135m | study2 | 2 of 3 |" in (tmp_path / "report" / "report.md").read_text()
    assert report["warnings"] == ["smollm2-135m study2: raw/manifest.json counts 2 failed rows but answers.jsonl "
                                  "holds 0; the failed table shows the manifest's"]


def test_missing_or_incomplete_step_folders_are_named_before_anything_is_written(tmp_path):
    root, prepared = build(tmp_path)
    shutil.rmtree(root / B / TS / "study2" / "probabilities")
    (root / "smollm2-135m" / TS / "study1" / "structured" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        collect.run(config(root, prepared, tmp_path / "report"))
    msg = str(e.value)
    assert str(root / B / TS / "study2" / "probabilities") + ": folder missing" in msg
    assert str(root / "smollm2-135m" / TS / "study1" / "structured") + ": incomplete" in msg
    assert "allow_missing=true" in msg
    assert not (tmp_path / "report").exists()
    assert not list(root.glob(f"*/{TS}/*.csv"))  # nothing published


def test_allow_missing_records_and_reports_them(tmp_path):
    from steps._cli import main

    root, prepared = build(tmp_path)
    shutil.rmtree(root / B / TS / "study2" / "probabilities")
    out, results = tmp_path / "results" / "report" / TS, tmp_path / "results"  # as on Argo: root is read-only
    counts = main(collect.CollectConfig, collect.run, argv=[
        "--root", str(root), "--publish-root", str(results), "--prepared", str(prepared), "--experiment", "exp1",
        "--timestamp", TS, "--models", json.dumps(MODELS), "--studies", "study1,study2", "--out", str(out),
        "allow_missing=true"])
    assert counts["missing"] == 1 and counts["published_csvs"] == 11
    man = json.loads((out / "manifest.json").read_text())
    assert [(m["model"], m["study"], m["step"]) for m in man["missing"]] == [(B, "study2", "probabilities")]
    assert man["results"][B]["study2"]["missing"] == ["probabilities"]
    assert "probabilities" not in man["results"][B]["study2"]["steps"]
    assert not (results / B / TS / f"{B}_study2_probabilities.csv").exists()
    assert (results / B / TS / f"{B}_study2_structured.csv").read_bytes() == \
        (root / B / TS / "study2" / "structured" / f"{B}_study2_structured.csv").read_bytes()
    assert man["published"][f"{B}/{TS}/{B}_study2_structured.csv"]["source"] == \
        f"{B}/{TS}/study2/structured/{B}_study2_structured.csv"
    assert not list(root.glob(f"*/{TS}/*.csv"))  # nothing written into the input tree
    assert B not in json.loads((out / "matrices.json").read_text())["study2"]["reply"]["models"]
    md = (out / "report.md").read_text()
    assert "## Missing step outputs" in md and str(root / B / TS / "study2" / "probabilities") in md
    assert "| org/model-b | study2 | 3 | 2 | missing | missing |" in md
    assert "| org/model-b | study2 | 0 of 3 | 1 of 3 | validation 1 | missing |" in md
    assert json.loads((out / "report.json").read_text())["failed"][-1]["probabilities"] is None


def test_a_csv_changed_after_its_step_is_refused(tmp_path):
    root, prepared = build(tmp_path)
    csv_path = root / "smollm2-135m" / TS / "study2" / "raw" / "smollm2-135m_study2_raw_responses.csv"
    csv_path.write_text(csv_path.read_text() + "extra,row\r\n")
    with pytest.raises(FileNotFoundError, match="changed after the step wrote it"):
        collect.run(config(root, prepared, tmp_path / "report"))
