"""`kubellm ui`: configure, start, stop, watch and compare runs in a browser, locally and on Argo.

    kubellm ui [--runs runs] [--argo-server https://localhost:2746] [--host 127.0.0.1] [--port 8765]

Why FastAPI with server-rendered Jinja2 pages and a little vanilla JS polling, not Gradio or a
JavaScript build: it is the FastAPI the NLI service already uses (no new framework, no npm step);
it is lighter than Gradio, whose state lives in the UI process's memory over a websocket; every
page is plain HTML with stable ids that a test browser (or curl) can drive; and the UI keeps no
state of its own: a run's state is its run folder (workflows.ui.runs), a started runner records its
pid there (workflows.ui.control), and an Argo workflow's state is the Argo Server's. Restarting the
UI loses nothing.

Modules: app (routes and the security checks), runs (reading run folders, safe paths, results),
control (start, stop, resume), forms (the configure form from a pipeline's PARAMS and its checks),
argo (the Argo Server client); templates/ and static/ hold the pages.
"""
