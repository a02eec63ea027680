"""Reliability diagrams (accuracy against confidence per bin) as PNG, for report.html and the
calibration benchmark."""

from __future__ import annotations

import io

import numpy as np


def reliability_figure(per_stage: dict[str, dict], title: str | None = None):
    """Small multiples, one reliability diagram per stage, as a matplotlib Figure (Agg canvas,
    no pyplot state). A stage maps to a `metrics` result, or to {"before": m, "after": m}
    (e.g. `evaluate`'s result), drawn together: bars before scaling, outline after."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(per_stage))
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (stage, m) in enumerate(per_stage.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        pairs = [("before", m["before"]), ("after", m["after"])] if "before" in m else [("", m)]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.5")
        for label, mm in pairs:
            r = mm["reliability"]
            edges = np.asarray(r["edges"])
            width = np.diff(edges)
            acc = np.array([np.nan if a is None else a for a in r["accuracy"]])
            keep = np.isfinite(acc)
            text = f"ECE {mm['ece']:.3f}, NLL {mm['nll']:.3f}"
            if label == "after" and "temperature" in m:
                text += f" (T={m['temperature']:.2f})"
            if label == "after":
                ax.bar(
                    edges[:-1][keep],
                    acc[keep],
                    width[keep],
                    align="edge",
                    fill=False,
                    edgecolor="tab:orange",
                    lw=1.2,
                    label=f"after: {text}",
                )
            else:
                ax.bar(
                    edges[:-1][keep],
                    acc[keep],
                    width[keep],
                    align="edge",
                    color="tab:blue",
                    alpha=0.6,
                    edgecolor="white",
                    lw=0.5,
                    label=f"{label + ': ' if label else ''}{text}",
                )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel(f"confidence ({pairs[0][1]['bins']} bins)", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(loc="upper left", fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reliability_png(per_stage: dict[str, dict], title: str | None = None) -> bytes:
    """`reliability_figure` rendered to PNG bytes (for a data: URI in report.html)."""
    fig = reliability_figure(per_stage, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
