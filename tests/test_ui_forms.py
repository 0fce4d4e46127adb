"""`kubellm ui`'s configure form: generated from a pipeline's PARAMS, checked as `kubellm run` checks,
each error beside the parameter it names, and nothing started on an error."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from workflows.ui import control, forms
from workflows.ui.app import create_app


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(control, "start", lambda folder, pipeline, params, cwd=None, options=None: calls.append(
        (folder.name, pipeline, params, options)) or 4242)
    return calls


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(tmp_path / "runs"), base_url="http://127.0.0.1:8765")


def field_html(page: str, name: str) -> str:
    m = re.search(rf'<div class="field[^"]*" id="field-{re.escape(name)}">(.*?)\n</div>', page, re.S)
    assert m, f"no field {name}"
    return m.group(1)


def test_the_form_shows_every_parameter_with_help_choices_and_compile_time():
    from workflows.distill import PARAMS

    page = TestClient(create_app(__import__("pathlib").Path("/nonexistent-runs")),
                      base_url="http://127.0.0.1").get("/new/distill").text
    for name, p in PARAMS.items():
        html = field_html(page, name)
        assert p.help.split(":")[0].replace("'", "&#39;")[:30] in html
        if p.choices():
            assert "<select" in html and all(f'value="{c}"' in html for c in p.choices())
        assert ("[compile-time]" in html) == p.compile_time
    assert 'name="run_name" value="distill"' in page


def test_field_errors_go_beside_their_fields_and_nothing_starts(client, started, tmp_path):
    r = client.post("/new/distill", data={"run_name": "d1", "steps": "-1", "learning-rate": "fast"})
    assert r.status_code == 422
    assert "greater than or equal to 1" in field_html(r.text, "steps")
    assert "learning-rate" in field_html(r.text, "learning-rate") and 'class="error"' in field_html(r.text, "learning-rate")
    assert 'class="error"' not in field_html(r.text, "student")
    assert 'value="-1"' in field_html(r.text, "steps")  # what was typed stays
    assert started == [] and not (tmp_path / "runs" / "d1").exists()


def test_a_cross_parameter_error_goes_beside_the_parameter_it_names_first(client, started):
    r = client.post("/new/distill", data={"run_name": "d1", "heldout-paraphrase": "99"})
    assert r.status_code == 422
    assert "cannot exceed num-questions" in field_html(r.text, "heldout-paraphrase")
    assert started == []


def test_the_run_name_must_be_a_plain_name(client, started):
    for bad in ("../escape", "/tmp/x", "a/b", ".hidden", ""):
        r = client.post("/new/distill", data={"run_name": bad})
        assert r.status_code == 422, bad
        assert "not a run name" in field_html(r.text, "run_name"), bad
    assert started == []


def test_valid_parameters_start_the_run_with_only_what_differs(client, started):
    r = client.post("/new/distill", data={"run_name": "d1", "steps": "20", "student": "smollm2-135m"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/runs/d1"
    assert started == [("d1", "distill", {"steps": "20"}, {"store": "s3"})]


def test_run_options_go_to_the_runner_and_bad_ones_are_refused_beside_their_fields(client, started):
    r = client.post("/new/nli", data={"run_name": "n1", "store": "pvc", "jobs": "2", "serve_port": "18931"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert started == [("n1", "nli", {}, {"store": "pvc", "jobs": "2", "serve_port": "18931"})]
    r = client.post("/new/nli", data={"run_name": "n2", "store": "nfs", "jobs": "0", "serve_port": "80"})
    assert r.status_code == 422 and len(started) == 1
    assert "choose s3 or pvc" in field_html(r.text, "store")
    assert "jobs=&#39;0&#39;: give a whole number from 1 to 64" in field_html(r.text, "jobs")
    assert "serve-port=&#39;80&#39;: give a whole number from 1024 to 65535" in field_html(r.text, "serve_port")
    assert 'value="0"' in field_html(r.text, "jobs")  # the form keeps what was typed


def test_what_only_the_compile_refuses_is_shown_before_anything_starts(client, started, tmp_path):
    r = client.post("/new/distill", data={"run_name": "mn", "nodes": "2", "store": "s3"})
    assert r.status_code == 422 and started == [] and not (tmp_path / "runs" / "mn").exists()
    assert "--store pvc" in field_html(r.text, "nodes")


def test_the_form_offers_a_run_folder_not_taken_yet(client, tmp_path):
    from tests.runfolders import make_run

    make_run(tmp_path / "runs", "nli", phase="Succeeded")
    assert 'name="run_name" value="nli-2"' in client.get("/new/nli").text


def test_an_existing_run_is_not_overwritten(client, started, tmp_path):
    from tests.runfolders import make_run

    make_run(tmp_path / "runs", "d1", phase="Succeeded")
    r = client.post("/new/distill", data={"run_name": "d1"})
    assert r.status_code == 422 and "already exists" in field_html(r.text, "run_name")
    assert started == []


def test_field_of_names_the_first_parameter_in_a_message():
    names = ["teacher", "teacher-url", "student", "cycles", "method", "num-questions", "heldout-paraphrase"]
    assert forms.field_of("heldout-paraphrase cannot exceed num-questions", names) == "heldout-paraphrase"
    assert forms.field_of("parameter teacher-url='x': bad", names) == "teacher-url"
    assert forms.field_of("teacher 'x' is not served (it serves the student ...)", names) == "teacher"
    assert forms.field_of("cycles > 1 needs method lora", names) == "cycles"
    assert forms.field_of("the reference is not installed", names) == forms.FORM_ERROR


def test_unknown_pipeline(client):
    r = client.get("/new/nope")
    assert r.status_code == 404 and "unknown pipeline &#39;nope&#39;" in r.text
