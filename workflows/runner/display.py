"""What a run shows: a rich live table on a terminal (plain timestamped lines otherwise), and the summary."""

from __future__ import annotations

import time
from typing import Any

from workflows.runner.state import FAILED, TERMINAL, RunResult, Task


class Display:
    """Rich live table on a terminal, plain timestamped lines otherwise."""

    def __init__(self, console: Any) -> None:
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.live = None
        self._last = 0.0
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def say(self, text: str, style: str | None = None) -> None:
        try:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        except OSError:
            self._lost()

    def _lost(self) -> None:
        """The terminal went away (its window closed: writes fail with EIO): show nothing more, so
        that stopping the nodes and writing run.json are not cut short by a failed write."""
        from rich.console import Console

        live, self.live = self.live, None
        if live is not None:
            try:
                live.stop()
            except OSError:
                pass
        self.console = Console(quiet=True)

    def event(self, nid: str, phase: str, message: str = "") -> None:
        if self.live is not None and phase not in FAILED and "retrying" not in message:
            return
        style = "red" if phase in FAILED else "green" if phase == "Succeeded" else None
        self.say(f"{time.strftime('%H:%M:%S')} {nid:<28} {phase}" + (f"  {message}" if message else ""), style)

    def refresh(self, rows: list, force: bool = False) -> None:
        """Redraw the live table from the run's rows (nodes, and tasks decided without a node)."""
        if self.live is None or (not force and time.monotonic() - self._last < 0.25):
            return
        from rich.table import Table

        self._last = time.monotonic()
        table = Table(box=None, pad_edge=False)
        for col in ("node", "phase", "progress", "elapsed"):
            table.add_column(col)
        for row in _live_rows(rows)[-25:]:
            table.add_row(*row)
        self.live.update(table)

    def stop(self) -> None:
        if self.live is not None:
            try:
                self.live.stop()
            except OSError:
                self._lost()
            self.live = None

    def summary(self, name: str, result: RunResult) -> None:
        from rich.table import Table

        table = Table(title=f"{name}: {result.phase} in {result.wall_s:.1f}s "
                            f"(runner overhead {result.overhead_s:.1f}s)", title_justify="left")
        for col in ("node", "phase", "attempts", "duration", "outputs"):
            table.add_column(col, overflow="fold")
        for nid, st in result.nodes.items():
            outs = st.get("outputs") or {}
            shown = [f"{k}={v if len(v) <= 40 else v[:37] + '...'}" for k, v in (outs.get("parameters") or {}).items()]
            shown += [f"{k}/" for k in outs.get("artifacts") or {}]
            phase = st["phase"] + (" (reused)" if st.get("reused") else "")
            table.add_row(nid, phase, str(st.get("attempts", 0)), f"{st.get('duration_s', 0.0):.1f}s", " ".join(shown))
        try:
            self.console.print(table)
        except OSError:
            self._lost()
        if result.phase != "Succeeded":
            self.say(f"failed: {result.message}", "red")
            if result.log_tail:
                self.say(f"last lines of {result.out / 'nodes' / str(result.failed_node) / 'log.txt'}:\n{result.log_tail}")
            self.say(f"fix it and run the same command again: finished nodes are reused from {result.out}")


def _live_rows(rows: list) -> list[tuple[str, str, str, str]]:
    out = []
    now = time.monotonic()
    for r in rows:
        if isinstance(r, Task):
            out.append((r.id, r.phase or "", "", ""))
            continue
        progress = ""
        if r.phase == "Running":
            try:
                progress = (r.dir / "progress").read_text().strip()[:20]
            except OSError:
                pass
        elapsed = now - r.t_first if r.started and r.phase not in TERMINAL else (
            (r.finished - r.started) if r.finished and r.started else 0.0)
        label = r.phase + (" (reused)" if r.reused else "") + (" (ready)" if r.daemon and r.ready and r.phase == "Running" else "")
        out.append((r.id, label, progress, f"{elapsed:.1f}s" if elapsed else ""))
    return out
