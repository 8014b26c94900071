"""A benchmark as a picture (the `plot` extra, matplotlib): one row per batch size; on the left
each model's latency over the rounds (a box: median, quartiles, p10-p90 whiskers), on the
right its per-round ratio to the baseline with the 95% interval, against the line at 1.0 that
says "no different"."""

from __future__ import annotations

import io
from pathlib import Path

from unfold.bench import BenchReport
from unfold.errors import ExitCode, UnfoldError
from unfold.onnx_files import write_bytes_atomic


def require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UnfoldError("plotting needs matplotlib: `pip install -e \".[plot]\"` in this "
                          "checkout (or `pip install matplotlib`)", ExitCode.ENGINE_MISSING)


def save_plot(report: BenchReport, out: str | Path) -> Path:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    batches = report.batches
    names = [r.model for r in report.for_batch(batches[0])]
    height = 0.55 * len(names) + 1.2
    figure, axes = plt.subplots(len(batches), 2, figsize=(11, height * len(batches)),
                                squeeze=False, gridspec_kw={"width_ratios": [3, 2]})
    for row, batch in enumerate(batches):
        results = report.for_batch(batch)
        latency, ratio = axes[row]
        ms = [[s * 1e3 for s in r.seconds] for r in results]
        latency.boxplot(ms, vert=False, whis=(10, 90), showfliers=False, widths=0.6)
        latency.set_yticks(range(1, len(results) + 1), [r.model for r in results])
        latency.invert_yaxis()
        latency.set_xlabel("latency per run, ms (box: quartiles, whiskers: p10-p90)")
        latency.set_title(f"batch {batch}", loc="left")
        latency.grid(axis="x", alpha=0.3)
        for i, r in enumerate(results):
            if r.ratio is None:
                ratio.plot([1.0], [i], marker="o", color="grey")
                continue
            ratio.errorbar([r.ratio.median], [i],
                           xerr=[[r.ratio.median - r.ratio.low], [r.ratio.high - r.ratio.median]],
                           fmt="o", capsize=4, color="C1" if r.ratio.within_noise else "C0")
            ratio.annotate(r.ratio.describe(), (r.ratio.median, i), xytext=(0, 8),
                           textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ratio.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ratio.set_yticks(range(len(results)), [r.model for r in results])
        ratio.set_ylim(len(results) - 0.5, -0.5)
        ratio.set_xlabel(f"per-round time / {report.baseline}'s (median, 95% interval)")
        ratio.grid(axis="x", alpha=0.3)
    rounds = f"{report.rounds} rounds" if report.rounds else f"{report.seconds_budget:g} s"
    figure.suptitle(f"{report.runtime}, {report.threads} threads, {rounds} interleaved, "
                    f"{report.environment.get('cpu', report.device)}", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_bytes_atomic(buffer.getvalue(), out)
