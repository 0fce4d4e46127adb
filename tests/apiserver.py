"""A Kubernetes-like API server on 127.0.0.1 for tests of the code that reads a cluster through
lightkube (steps.detect, steps.harvest_cluster): plain HTTP on a free port, GET only, real sockets.

    with ApiServer({"/api/v1/nodes": NODES}) as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)   # context "ml", bearer TOKEN
        ...
    api.requests          # every request in order: {"path", "query", "authorization"}

Every GET is answered by the first of these that applies:

- `error`: this Status, with its `code`, to every request (a refusal of everything, a proxy's 502);
- `forbidden`: path prefixes answered 403 Forbidden, worded as the API server's RBAC refusal;
- `routes`, an exact path or a compiled pattern (fullmatch) mapped to
  - a list of objects: a collection, also at its namespaced path (/api/v1/namespaces/NS/pods lists the
    objects whose metadata.namespace is NS), paged by `limit`; the `continue` token is
    `continue_prefix` and the offset of the next page, opaque to the client;
  - a callable `(request, match) -> (code, body[, content type])`: a dict body goes out as JSON, a
    str as text/plain (pod logs);
  - a dict: answered as it is;
- anything else: 404 NotFound.

`send_content_type=False` sends answers without a Content-Type, as some proxies in front of a real
API server do. `api_request(path, query)` names a request as RBAC does (verb, API group, resource with
subresource, namespace), for the refusals here and for tests that check a Role against what a
harvest asked for.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

TOKEN = "kubellm-test-token-0a1b2c3d4e5f"
USER = "system:serviceaccount:ml:kubellm"


def status(code: int, reason: str, message: str | None = None) -> dict:
    """A Kubernetes Status object, as the API server answers a failed request."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason,
            "code": code}
    return {**body, "message": message} if message is not None else body


def api_request(path: str, query: dict[str, str] | None = None) -> dict[str, str | None]:
    """A GET's RBAC attributes (what the API server's request resolver derives from the URL):
    /api/v1/namespaces/ml/pods/p/log -> verb get, group "", resource pods/log, namespace ml, name p;
    a collection is `list` (`watch` with ?watch=true)."""
    parts = [p for p in path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[:1] == ["api"] else (parts[1] if len(parts) > 1 else "", parts[3:])
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join(rest[:1] + rest[2:3])
    name = rest[1] if len(rest) > 1 else None
    verb = "get" if name else "watch" if (query or {}).get("watch") in ("1", "true") else "list"
    return {"verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name}


def forbidden_status(path: str, query: dict[str, str] | None = None, user: str = USER) -> dict:
    """The 403 the API server answers when RBAC allows no rule for the request, in its own words."""
    r = api_request(path, query)
    scope = f'in the namespace "{r["namespace"]}"' if r["namespace"] else "at the cluster scope"
    what = f'{r["resource"].split("/")[0]} "{r["name"]}"' if r["name"] else r["resource"]
    return status(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {r["verb"]} resource '
                                    f'"{r["resource"]}" in API group "{r["group"]}" {scope}')


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    """A kubeconfig with one context, `ml`, that reaches `server` with a bearer token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ml",
        "clusters": [{"name": "ml", "cluster": {"server": server}}],
        "users": [{"name": "kubellm", "user": {"token": token}}],
        "contexts": [{"name": "ml", "context": {"cluster": "ml", "user": "kubellm"}}]}))
    return path


def clear_proxies(monkeypatch) -> None:
    """Loopback requests must not go through a proxy from the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """clear_proxies for every test of a module that imports this fixture."""
    clear_proxies(monkeypatch)


# /api/v1/namespaces/NS/PLURAL or /apis/GROUP/VERSION/namespaces/NS/PLURAL -> the collection and NS
_NAMESPACED = re.compile(r"^(/api/v1|/apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)$")


class ApiServer:
    """See the module's docstring. Use as a context manager; `url` is known before it starts."""

    def __init__(self, routes: dict[str | re.Pattern, Any] | None = None, *, error: dict | None = None,
                 forbidden: tuple[str, ...] = (), send_content_type: bool = True, continue_prefix: str = "at-"):
        self.routes, self.error, self.forbidden = routes or {}, error, forbidden
        self.send_content_type, self.continue_prefix = send_content_type, continue_prefix
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                request = {"path": url.path, "query": query, "authorization": self.headers.get("Authorization")}
                outer.requests.append(request)
                self._send(*outer.answer(request))

            def _send(self, code: int, body: Any, ctype: str | None = None):
                if isinstance(body, str):
                    data, ctype = body.encode(), ctype or "text/plain"
                else:
                    data, ctype = json.dumps(body).encode(), ctype or "application/json"
                self.send_response(code)
                if outer.send_content_type:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        # port 0: the kernel picks a free port, with no window for another process to take it
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, request: dict) -> tuple:
        path, query = request["path"], request["query"]
        if self.error:
            return self.error["code"], self.error
        if any(path.startswith(f) for f in self.forbidden):
            return 403, forbidden_status(path, query)
        for key, route in self.routes.items():
            match = key.fullmatch(path) if isinstance(key, re.Pattern) else None
            if key == path or match:
                if callable(route):
                    return route(request, match)
                return (200, route) if isinstance(route, dict) else self.page(route, query)
        m = _NAMESPACED.match(path)
        collection = self.routes.get(f"{m.group(1)}/{m.group(3)}") if m else None
        if isinstance(collection, list):
            return self.page([o for o in collection if (o.get("metadata") or {}).get("namespace") == m.group(2)],
                             query)
        return 404, status(404, "NotFound")

    def page(self, objects: list[dict], query: dict[str, str]) -> tuple[int, dict]:
        """One page of a List: `limit` objects from where the `continue` token points."""
        start = int(query["continue"].removeprefix(self.continue_prefix)) if "continue" in query else 0
        limit = int(query.get("limit", len(objects) or 1))
        meta: dict[str, Any] = {"resourceVersion": "48212000"}
        if start + limit < len(objects):
            meta["continue"] = f"{self.continue_prefix}{start + limit}"
            meta["remainingItemCount"] = len(objects) - start - limit
        return 200, {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": objects[start:start + limit]}

    def __enter__(self) -> ApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
