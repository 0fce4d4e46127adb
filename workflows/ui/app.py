"""The `kubellm ui` web app: routes, the security checks, and the pages' data (workflows.ui).

    from workflows.ui.app import create_app
    app = create_app(Path("runs"))            # then: uvicorn, or fastapi.testclient.TestClient(app)
"""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from workflows.ui import control, forms, runs
from workflows.ui.argo import Argo, ArgoError

HERE = Path(__file__).parent
COOKIE = "kubellm_ui_token"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
IMAGES = (".png", ".svg", ".jpg", ".jpeg")


def create_app(runs_dir: Path, argo: Argo | None = None, token: str | None = None, loopback: bool = True,
               cwd: Path | None = None) -> FastAPI:
    """runs_dir: the runs folder; argo: the Argo Server to show and submit to (None: local runs only);
    token: required on every request when set; loopback: the app is bound to a loopback address, so
    a request naming another Host (DNS rebinding) is refused; cwd: where started runs run."""
    from workflows.cli import PIPELINES

    root = Path(runs_dir)
    app = FastAPI(title="kubellm ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    pages = Jinja2Templates(directory=HERE / "templates")
    pages.env.globals |= {"pipelines": PIPELINES, "argo": argo}
    pages.env.filters["dur"] = _duration
    pages.env.filters["when"] = _when

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return pages.TemplateResponse(request, name, ctx, status_code=status)

    def message(request: Request, text: str, status: int = 404, title: str = "Not found") -> HTMLResponse:
        return page(request, "message.html", status, title=title, text=text)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _hostname(request.headers.get("host") or "")
        if loopback and host not in LOOPBACK_HOSTS:
            return PlainTextResponse(f"kubellm ui answers only as 127.0.0.1 or localhost, not {host!r}", 403)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin") or request.headers.get("referer")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("cross-site request refused (its Origin is another site)", 403)
        if token:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, token):
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                r = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
                r.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return r
            auth = request.headers.get("authorization", "")
            sent = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(sent, token):
                return PlainTextResponse("kubellm ui needs its token: open the URL with ?token=... once, or send "
                                         "Authorization: Bearer ...", 401)
        return await call_next(request)

    @app.exception_handler(runs.NotARun)
    async def not_a_run(request: Request, e: runs.NotARun):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e)}, 404)
        return message(request, str(e))

    @app.exception_handler(ArgoError)
    async def argo_down(request: Request, e: ArgoError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e)}, 502)
        return message(request, str(e), 502, "Argo Server")

    # -- local runs ------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, "runs.html", rows=runs.list_runs(root), root=root.resolve())

    @app.get("/api/runs")
    def api_runs():
        return runs.list_runs(root)

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(request: Request, name: str):
        folder = runs.run_dir(root, name)
        return page(request, "run.html", run=detail(name), results=results(name, folder))

    @app.get("/api/runs/{name}")
    def api_run(name: str):
        return detail(name)

    def detail(name: str) -> dict:
        folder = runs.run_dir(root, name)
        s = runs.summary(root, name)
        s["nodes"] = runs.nodes(folder, s["status"] == "Running")
        s["can_stop"] = s["status"] == "Running"  # a runner the UI started, or one a folder lock names
        s["can_resume"] = s["status"] != "Running" and s["pipeline"] in PIPELINES
        s["launch_log"] = control.launch_log_tail(folder, 20) if s["status"] in ("Failed", "Stopped") and s["by_ui"] else ""
        return s

    def results(name: str, folder: Path) -> dict:
        where = runs.report_dir(folder)
        rel = where.relative_to(folder).as_posix() if where else None
        md = runs.report_md(folder)
        html = _markdown(md[0], f"/runs/{name}/files/" + (f"{md[1]}/" if md[1] != "." else "")) if md else ""
        every = runs.files(folder, IMAGES)
        images = [p for p in every if not p.startswith("nodes/")] or every  # the report's copies, else the nodes'
        shown = [p for p in images if f'src="/runs/{name}/files/{p}"' not in html]  # the report shows the rest
        return {"report_html": html, "images": shown, "csvs": runs.files(folder, (".csv",)),
                "report_json": f"{rel}/report.json" if where and runs.inside(folder, where / "report.json") else None,
                "estimates": runs.cis(runs.report_json(folder)), "params": runs.parameters_of(folder)}

    @app.get("/api/runs/{name}/nodes/{node}/log", response_class=PlainTextResponse)
    def node_log(name: str, node: str, tail: int = 200):
        return runs.log_tail(runs.run_file(root, name, f"nodes/{node}/log.txt"), tail)

    @app.get("/runs/{name}/files/{rel:path}")
    def run_file(name: str, rel: str):
        # sandboxed: a report.html or an SVG from a run cannot script this app
        return FileResponse(runs.run_file(root, name, rel), headers={"Content-Security-Policy": "sandbox"})

    @app.post("/runs/{name}/stop")
    def stop(request: Request, name: str):
        try:
            control.stop(runs.run_dir(root, name))
        except control.RunConflict as e:
            return message(request, str(e), 409, "Cannot stop")
        return RedirectResponse(f"/runs/{name}", 303)

    @app.post("/runs/{name}/resume")
    def resume(request: Request, name: str):
        folder = runs.run_dir(root, name)
        pipeline = runs.pipeline_of(folder)
        if pipeline not in PIPELINES:
            return message(request, f"{name}: cannot tell which pipeline made this run, so it cannot be resumed "
                                    "from here; use `kubellm run PIPELINE --out ...`", 409, "Cannot resume")
        try:
            control.start(folder, pipeline, control.resume_params(folder, forms.pipeline_params(pipeline)), cwd,
                          control.resume_options(folder))
        except control.RunConflict as e:
            return message(request, str(e), 409, "Cannot resume")
        return RedirectResponse(f"/runs/{name}", 303)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str = "", b: str = "", run: list[str] = Query([])):
        if run and not (a or b):  # the runs list's checkboxes
            if len(run) != 2:
                return message(request, f"pick exactly two runs to compare ({len(run)} picked)", 400, "Compare")
            b, a = run  # the list shows the newest first: A is the older run
        if not a or not b:
            names = [r["name"] for r in runs.list_runs(root)]
            b = b or next((n for n in names if n != a), "")
            return page(request, "compare.html", cmp=None, names=names, a=a, b=b)
        return page(request, "compare.html", cmp=runs.compare(root, a, b), names=[])

    # -- configure and start ---------------------------------------------------------------------

    @app.get("/new/{pipeline}", response_class=HTMLResponse)
    def new(request: Request, pipeline: str, target: str = "local"):
        if pipeline not in PIPELINES:
            return message(request, f"unknown pipeline {pipeline!r}; available: {', '.join(PIPELINES)}")
        return page(request, "new.html", pipeline=pipeline, fields=forms.fields(pipeline), errors={},
                    run_name=_free_name(root, pipeline), target=target if argo else "local", opts={"store": "s3"})

    @app.post("/new/{pipeline}", response_class=HTMLResponse)
    async def submit(request: Request, pipeline: str, run_name: str = Form(""), target: str = Form("local")):
        if pipeline not in PIPELINES:
            return message(request, f"unknown pipeline {pipeline!r}; available: {', '.join(PIPELINES)}")
        form = {k: str(v) for k, v in (await request.form()).items()}
        params = forms.given(pipeline, form)
        to_argo = target == "argo" and argo is not None
        status = 422
        errors = forms.check(pipeline, params, local=not to_argo)
        opts, opt_errors = forms.options(form)
        errors |= opt_errors
        store = opts["store"]
        folder = None
        if not to_argo:
            try:
                folder = runs.run_dir(root, run_name, must_exist=False)
                if folder.exists():
                    errors["run_name"] = (f"{run_name} already exists: open it to resume it, or choose another name"
                                          if runs.is_run(folder) else f"{folder} exists and is not a run; choose another name")
            except runs.NotARun as e:
                errors["run_name"] = str(e)
        from workflows.cli import compile_doc

        if not errors and not to_argo:  # what only the compile finds (e.g. nodes > 1 on the s3 store)
            try:
                compile_doc(pipeline, store, params, int(opts["serve_port"]) if "serve_port" in opts else None,
                            checked=True)  # forms.check ran check_local_run
            except SystemExit as e:
                errors[forms.field_of(str(e), list(forms.pipeline_params(pipeline)))] = str(e)
        if not errors and to_argo:
            try:
                return RedirectResponse(f"/argo/{argo.submit(compile_doc(pipeline, store, params))}", 303)
            except SystemExit as e:
                errors[forms.FORM_ERROR] = str(e)
            except ArgoError as e:  # the form stays filled in: submit again once the server is back
                errors[forms.FORM_ERROR] = str(e)
                status = 502
        if errors:
            return page(request, "new.html", status, pipeline=pipeline, fields=forms.fields(pipeline, form, errors),
                        errors=errors, run_name=run_name, target=target, opts=form)
        try:
            control.start(folder, pipeline, params, cwd, opts)
        except control.RunConflict as e:
            return message(request, str(e), 409, "Cannot start")
        return RedirectResponse(f"/runs/{run_name}", 303)

    # -- Argo --------------------------------------------------------------------------------------

    def need_argo(request: Request) -> HTMLResponse | None:
        return None if argo else message(request, "no Argo Server: start kubellm ui with --argo-server URL", 404)

    @app.get("/argo", response_class=HTMLResponse)
    def argo_list(request: Request):
        if (missing := need_argo(request)) is not None:
            return missing
        try:
            rows, error = argo.list(), ""
        except ArgoError as e:
            rows, error = [], str(e)
        return page(request, "argo.html", rows=rows, error=error)

    @app.get("/argo/{name}", response_class=HTMLResponse)
    def argo_workflow(request: Request, name: str):
        if (missing := need_argo(request)) is not None:
            return missing
        return page(request, "argo_workflow.html", wf=argo.get(name))

    @app.get("/api/argo/{name}")
    def api_argo_workflow(name: str):
        if argo is None:
            return JSONResponse({"error": "no Argo Server configured"}, 404)
        return argo.get(name)

    @app.get("/api/argo/{name}/log", response_class=PlainTextResponse)
    def argo_log(name: str, pod: str, tail: int = 200):
        if argo is None:
            return PlainTextResponse("no Argo Server configured", 404)
        return argo.log(name, pod, max(1, min(tail, 5000)))

    @app.post("/argo/{name}/{action}")
    def argo_action(request: Request, name: str, action: str):
        if (missing := need_argo(request)) is not None:
            return missing
        if action not in ("stop", "retry"):
            return message(request, f"unknown action {action!r}: stop or retry")
        getattr(argo, action)(name)
        return RedirectResponse(f"/argo/{name}", 303)

    return app


def _free_name(root: Path, pipeline: str) -> str:
    """A run folder name not taken yet: the pipeline's name, else name-2, name-3, ..."""
    name, i = pipeline, 1
    while (root / name).exists():
        i += 1
        name = f"{pipeline}-{i}"
    return name


def _when(iso: str | None) -> str:
    """An ISO timestamp as `2026-12-03 16:47 UTC` ("-" when there is none)."""
    import datetime as dt

    if not iso:
        return "-"
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return (t.astimezone(dt.timezone.utc) if t.tzinfo else t).strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def _markdown(text: str, base: str) -> str:
    """A report.md as HTML: raw HTML in it stays text, relative image paths point into the run folder."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for t in tokens:
        for child in t.children or []:
            src = child.attrGet("src") if child.type == "image" else None
            if src and not urlsplit(src).scheme and not src.startswith("/"):
                child.attrSet("src", base + src)
    return md.renderer.render(tokens, md.options, {})


def _hostname(host_header: str) -> str:
    """The host of a Host header without its port ("[::1]:8765" -> "[::1]")."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0]
