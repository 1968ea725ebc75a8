"""``--plot FILE``: per-layer gradient RMS on a log axis, in forward order, one panel per target.

Predicted values as a line (measured ones as crosses with ``--measure``), the AL105 threshold as
a dashed line (the output layers' level minus ``max-decades``), and each layer marked by what
follows it: a saturating activation (red) or a normalisation layer (green). Needs matplotlib
(``pip install archlint[plot]``); ``.png``, ``.svg``, ``.pdf`` and ``.html`` (an SVG inside a page).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..results import LayerInfo, TargetResult

class PlotError(RuntimeError):
    pass


def _series(result: TargetResult) -> list[LayerInfo]:
    layers = [layer for layer in result.layers if layer.grad_rms]
    layers.sort(key=lambda layer: layer.position if layer.position is not None else 10 ** 9)
    return layers


def render_plot(results: list[TargetResult], path: str, max_decades: float = 3.0) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'archlint[plot]'") from None
    panels = [r for r in results if r.status == "ok" and any(
        layer.grad_rms for layer in r.layers)]
    if not panels:
        raise PlotError("nothing to plot: no target has a gradient estimate")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, result in zip(axes[:, 0], panels):
        layers = _series(result)
        xs = list(range(len(layers)))
        pred = [max(layer.grad_rms or 0.0, 1e-30) for layer in layers]
        ax.plot(xs, pred, "-o", color="#1f77b4", markersize=3, label="predicted")
        meas = [(x, layer.measured_grad_rms) for x, layer in zip(xs, layers)
                if layer.measured_grad_rms]
        if meas:
            ax.plot([m[0] for m in meas], [m[1] for m in meas], "x", color="black",
                    label="measured")
        for x, layer in zip(xs, layers):
            kind = layer.followed_by
            if kind == "saturating":
                ax.axvspan(x - 0.4, x + 0.4, color="#d62728", alpha=0.15, lw=0)
            elif kind == "norm":
                ax.axvspan(x - 0.4, x + 0.4, color="#2ca02c", alpha=0.12, lw=0)
        tail = pred[-max(1, math.ceil(0.1 * len(pred))):]
        level = 10 ** (sum(math.log10(v) for v in tail) / len(tail))
        ax.axhline(level * 10 ** -max_decades, color="#d62728", ls="--", lw=1,
                   label=f"AL105 threshold ({max_decades:g} decades)")
        ax.set_yscale("log")
        zero = sum(1 for layer in result.layers if layer.grad_rms == 0.0)
        extra = f" ({zero} layers with zero gradient at init by design not shown)" if zero else ""
        ax.set_title(result.target + extra, fontsize=9)
        ax.set_ylabel("weight-gradient RMS")
        step = max(1, len(layers) // 30)
        ax.set_xticks(xs[::step])
        ax.set_xticklabels([layer.module for layer in layers][::step], rotation=60,
                           ha="right", fontsize=6)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, which="major", axis="y", alpha=0.3)
    fig.text(0.01, 0.002, "red band: layer followed by a saturating activation; green: by a "
             "normalisation layer", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    try:
        if out.suffix.lower() == ".html":
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            out.write_text("<!doctype html><meta charset='utf-8'><title>archlint gradient "
                           f"flow</title><body>{buf.getvalue()}</body>")
        else:
            fig.savefig(out, dpi=120)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)
