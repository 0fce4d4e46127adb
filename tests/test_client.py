"""steps.client against a real HTTP server on loopback that injects faults (tests/faultserver.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.faultserver import FaultServer, answer_for, fault_server_module, server  # noqa: F401 - fixtures

from steps.client import Client, Endpoint, EndpointError, load_lora_adapter, message_text, redact

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}  # retries without waiting


def endpoint(srv: FaultServer, **kw) -> Endpoint:
    return Endpoint.parse("tiny", srv.url, **kw)


def chat(srv: FaultServer, prompt: str, ep: Endpoint | None = None, **client_kw):
    async def go():
        async with Client(ep or endpoint(srv), **{**FAST, **client_kw}) as c:
            return await c.chat([{"role": "user", "content": prompt}], max_tokens=8)

    return asyncio.run(go())


def test_answer_and_usage(server):
    res = chat(server, "hello there")
    assert res.attempts == 1
    assert message_text(res.data) == (answer_for("hello there"), "stop")
    assert res.data["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    (req,) = server.requests
    assert req.path == "/v1/chat/completions" and req.model == "tiny" and req.body["max_tokens"] == 8
    assert "authorization" not in req.headers  # no api_key_env: no header at all


@pytest.mark.parametrize("fault", ["500", "503", "malformed", "truncated", "nochoices", "sleep"])
def test_each_fault_is_retried_then_succeeds(server, fault):
    # Only "sleep" needs the client to time out; it sleeps far past that timeout, and every other
    # answer gets a timeout no loaded CI machine reaches on loopback, so each fault costs exactly
    # one attempt.
    server.sleep_s = 30.0
    res_timeout = 1.5 if fault == "sleep" else 30.0
    server.fail("p", fault, fault)
    res = chat(server, "p", max_retries=3, timeout_s=res_timeout)
    assert res.attempts == 3
    assert server.counts["p"] == 3
    assert [r.fault for r in server.requests] == [fault, fault, None]
    assert message_text(res.data)[0] == answer_for("p")


def test_completions_endpoint_retries_too(server):
    server.fail("once upon", "503")

    async def go():
        async with Client(endpoint(server), **FAST) as c:
            return await c.complete("once upon", max_tokens=4)

    res = asyncio.run(go())
    assert res.attempts == 2 and server.counts["once upon"] == 2
    assert message_text(res.data) == (answer_for("once upon"), "stop")
    assert server.requests[-1].path == "/v1/completions"


def test_retry_after_is_honoured(server):
    server.fail("slow down", "429")
    t0 = time.monotonic()
    res = chat(server, "slow down", backoff_base_s=0.001)  # our own backoff alone would be ~0 s
    elapsed = time.monotonic() - t0
    assert res.attempts == 2
    assert elapsed >= 1.0  # the server's Retry-After: 1, not our ~0 s backoff


def test_bad_request_fails_at_once(server):
    server.always_fail = "400"
    with pytest.raises(EndpointError) as e:
        chat(server, "bad", max_retries=5)
    assert e.value.status == 400 and e.value.attempts == 1
    assert f"{server.url}/v1/chat/completions" in str(e.value)
    assert "HTTP 400" in str(e.value) and "injected fault 400" in str(e.value)
    assert server.counts["bad"] == 1


def test_permanent_failure_names_url_status_and_attempts(server):
    server.always_fail = "500"
    with pytest.raises(EndpointError) as e:
        chat(server, "doomed", max_retries=2)
    msg = str(e.value)
    assert e.value.status == 500 and e.value.attempts == 3
    assert msg.startswith(f"{server.url}/v1/chat/completions: HTTP 500 after 3 attempt(s)")
    assert server.counts["doomed"] == 3


def test_permanent_timeout_says_timeout(server):
    server.sleep_s = 1.0
    server.always_fail = "sleep"
    with pytest.raises(EndpointError) as e:
        chat(server, "stuck", max_retries=1, timeout_s=0.2)
    assert e.value.status is None and e.value.attempts == 2
    assert "no HTTP response after 2 attempt(s)" in str(e.value)
    assert "timeout after 0.2 s" in str(e.value)
    assert server.counts["stuck"] == 2


def test_concurrency_is_bounded(server):
    server.delay_s = 0.1
    server.fail_next("503", "503")  # retries must queue behind the bound too

    async def go():
        async with Client(endpoint(server), concurrency=3, **FAST) as c:
            return await asyncio.gather(*(c.chat([{"role": "user", "content": f"q{i}"}]) for i in range(12)))

    results = asyncio.run(go())
    assert [message_text(r.data)[0] for r in results] == [answer_for(f"q{i}") for i in range(12)]
    assert len(server.completions()) == 14
    assert 2 <= server.max_in_flight <= 3


def test_api_key_from_env_is_a_bearer_header(server, monkeypatch):
    monkeypatch.setenv("KUBELLM_TEST_KEY", "sk" "-test-0123456789")
    server.fail("k", "500")
    res = chat(server, "k", ep=endpoint(server, api_key_env="KUBELLM_TEST_KEY"))
    assert res.attempts == 2
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer sk" "-test-0123456789"] * 2


def test_missing_api_key_env_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("KUBELLM_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="environment variable KUBELLM_TEST_KEY is not set"):
        chat(server, "k", ep=endpoint(server, api_key_env="KUBELLM_TEST_KEY"))
    assert server.requests == []


def test_api_key_is_not_in_errors(server, monkeypatch):
    monkeypatch.setenv("KUBELLM_TEST_KEY", "sk" "-test-0123456789")
    server.always_fail = "500"
    with pytest.raises(EndpointError) as e:
        chat(server, "k", ep=endpoint(server, api_key_env="KUBELLM_TEST_KEY"), max_retries=0)
    assert "sk" "-test" not in str(e.value) and "sk" "-test" not in repr(e.value.__dict__)


@pytest.mark.parametrize("text, expected", [
    ('{"message": "Incorrect API key provided: sk' '-proj-AbC123xyz_-987"}',
     '{"message": "Incorrect API key provided: [REDACTED]"}'),
    ("{'authorization': 'Bearer abc.def-ghi_123', 'x': 1}", "{'authorization': 'Bearer [REDACTED]', 'x': 1}"),
    ("Authorization: Basic dXNlcjpwYXNz\nnext line", "Authorization: Basic [REDACTED]\nnext line"),
    ("token was bearer 0123456789abcdef, try again", "token was bearer [REDACTED], try again"),
    ('{"api_key": "k-0123456789", "api_key_env": "OPENAI_API_KEY"}',
     '{"api_key": "[REDACTED]", "api_key_env": "OPENAI_API_KEY"}'),
    ("sk" "-short task-management sk" "-learn", "sk" "-short task-management sk" "-learn"),  # not keys
    ("HTTP 500 after 3 attempt(s): injected fault 500", "HTTP 500 after 3 attempt(s): injected fault 500"),
], ids=["sk" "-proj", "bearer-header", "basic-header", "bare-bearer", "api-key-field", "not-keys", "plain"])
def test_redact_credentials(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # redacted text stays as it is


def test_the_key_in_use_is_redacted_verbatim_from_errors(server, monkeypatch):
    key = "plain-looking-secret-42"  # no sk- prefix: only knowing the key in use finds it
    monkeypatch.setenv("KUBELLM_TEST_KEY", key)
    server.always_fail = "400"
    server.error_message = f"key {key} is not allowed; Authorization: Bearer {key}"
    with pytest.raises(EndpointError) as e:
        chat(server, "k", ep=endpoint(server, api_key_env="KUBELLM_TEST_KEY"), max_retries=0)
    assert key not in str(e.value) and key not in e.value.detail
    assert "key [REDACTED] is not allowed; Authorization: Bearer [REDACTED]" in str(e.value)
    assert redact(f"later text naming {key}") == "later text naming [REDACTED]"


def test_endpoint_parse():
    ep = Endpoint.parse("openai:gpt-4o-mini")
    assert (ep.base_url, ep.model, ep.api_key_env) == ("https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY")
    assert Endpoint.parse("openai:gpt-4o-mini", api_key_env="MY_KEY").api_key_env == "MY_KEY"
    assert Endpoint.parse("m", "http://h:8000").base_url == "http://h:8000/v1"
    assert Endpoint.parse("m", "http://h:8000/v1/").base_url == "http://h:8000/v1"
    assert Endpoint.parse("m", "http://h:8000").api_key_env is None
    with pytest.raises(ValueError, match="needs an endpoint URL"):
        Endpoint.parse("smollm2")


def test_backoff_is_capped_full_jitter_and_retry_after_wins():
    c = Client(Endpoint("http://x/v1", "m"), backoff_base_s=1.0, backoff_max_s=3.0)
    assert all(0 <= c._delay(1, None) <= 1.0 for _ in range(200))
    assert all(0 <= c._delay(10, None) <= 3.0 for _ in range(200))
    assert len({c._delay(3, None) for _ in range(20)}) > 1  # jittered, not a fixed schedule
    assert c._delay(1, "2") == 2.0
    assert c._delay(1, "100") == 100.0  # the server's word, even above our own backoff cap
    assert c._delay(1, "99999") == c.retry_after_max_s == 120.0  # but never absurdly long
    assert 0 <= c._delay(1, "Wed, 21 Oct 2015 07:28:00 GMT") <= 1.0  # HTTP-date: our own backoff


def test_load_lora_adapter_is_idempotent(server, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    load_lora_adapter(server.url + "/v1", "ft", str(tmp_path))
    load_lora_adapter(server.url, "ft", str(tmp_path))  # already loaded: fine for a retried step
    assert server.adapters == {"ft": str(tmp_path)}
    assert [r.path for r in server.requests] == ["/v1/load_lora_adapter"] * 2
    with pytest.raises(EndpointError) as e:
        load_lora_adapter(server.url, "other", str(tmp_path / "missing"))
    assert e.value.status == 400 and f"{server.url}/v1/load_lora_adapter" in str(e.value)
