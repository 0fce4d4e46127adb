"""Report building blocks for steps that write one: matplotlib figures (Agg, no display needed) and
one list of blocks rendered both as Markdown and as a self-contained HTML page (images inline).

Blocks: ("h1" | "h2" | "h3" | "p", text), ("ul", [items]), ("table", [header], [[cells]]),
("img", file, alt). matplotlib and numpy are imported inside the functions, so importing this
module (and `--help` of a step that does) stays fast.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(n: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_heatmaps(panels: list[tuple[str, list[list[float] | None]]], row_labels: list[str], col_labels: list[str],
                  title: str, ylabel: str, path: Path) -> None:
    """One annotated heatmap per model on a shared colour scale (rows with no data stay blank)."""
    import numpy as np

    plt = pyplot()
    mats = [np.array([[math.nan] * len(col_labels) if r is None else r for r in m], dtype=float) for _, m in panels]
    top = max([float(np.nanmax(m)) for m in mats if not np.all(np.isnan(m))] or [1.0]) or 1.0
    ncols = min(len(panels), 2 if len(col_labels) > 6 else 4)  # wide matrices two abreast, small ones four
    nrows = math.ceil(len(panels) / ncols)
    cell_w = 0.55 if len(col_labels) > 6 else 0.9
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(1.0 + ncols * (1.4 + cell_w * len(col_labels)), 0.5 + nrows * (1.2 + 0.5 * len(row_labels))))
    im = None
    for ax, (label, _), m in zip(axes.flat, panels, mats):
        im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=top, cmap="viridis", aspect="auto")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if not math.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if m[i, j] > 0.6 * top else "white")
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8, rotation=45 if len(col_labels) > 6 else 0)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="mean probability")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_expected(models: list[tuple[str, list[list[float]]]], states: list[str], title: str, path: Path) -> None:
    """Per state, a box (with the points over it) of the items' expected values, one box per model."""
    import numpy as np
    from matplotlib.patches import Patch

    plt = pyplot()
    colors = palette(len(models))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(states) * (0.4 + 0.3 * len(models))), 3.8))
    rng = np.random.default_rng(0)  # jitter only; fixed so the figure is reproducible
    for k, (_, per_state) in enumerate(models):
        pos = [i - 0.4 + width * (k + 0.5) for i in range(len(states))]
        data = [vals if vals else [math.nan] for vals in per_state]
        bp = ax.boxplot(data, positions=pos, widths=width * 0.8, patch_artist=True, showfliers=False,
                        manage_ticks=False)
        for box in bp["boxes"]:
            box.set(facecolor=colors[k], alpha=0.35)
        for p, vals in zip(pos, per_state):
            ax.scatter(p + rng.uniform(-width * 0.25, width * 0.25, len(vals)), vals, s=8, color=colors[k], zorder=3)
    ax.set_xticks(range(len(states)), states)
    ax.set_xlabel("state")
    ax.set_ylabel("expected value")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Patch(color=c, alpha=0.6, label=m) for c, (m, _) in zip(colors, models)], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grouped_bars(groups: list[str], series: list[tuple[str, list[float | None]]], title: str, ylabel: str,
                      path: Path, notes: list[list[str]] | None = None, ylim: float | None = None) -> None:
    """Bars per group (x), one per model; `notes` are printed above the bars (e.g. 41/45)."""
    plt = pyplot()
    colors = palette(len(series))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + len(groups) * (0.3 + 0.22 * len(series))), 3.8))
    for k, (label, ys) in enumerate(series):
        pos = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        ax.bar(pos, [0.0 if y is None else y for y in ys], width=width * 0.9, color=colors[k], label=label)
        for j, (p, y) in enumerate(zip(pos, ys)):
            if notes:
                ax.text(p, (y or 0.0), notes[k][j], ha="center", va="bottom", fontsize=7,
                        rotation=90 if len(series) > 3 else 0)
    ax.set_xticks(range(len(groups)), groups, rotation=30 if max(len(g) for g in groups) > 6 else 0, ha="right"
                  if max(len(g) for g in groups) > 6 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(0, ylim)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def render_md(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            lines += [blk[1], ""]
        elif kind == "ul":
            lines += [f"- {x}" for x in blk[1]] + [""]
        elif kind == "table":
            cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
            lines += ["| " + " | ".join(map(cell, blk[1])) + " |", "|" + "---|" * len(blk[1])]
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in blk[2]] + [""]
        elif kind == "img":
            lines += [f"![{blk[2]}]({blk[1]})", ""]
    return "\n".join(lines)


def render_html(blocks: list[tuple], folder: Path) -> str:
    e = html.escape
    parts = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in blk[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in blk[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / blk[1]).read_bytes()).decode()
            parts.append(f"<img alt='{e(blk[2])}' src='data:image/png;base64,{data}'/>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(blocks[0][1])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
