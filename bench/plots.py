"""Plots from a results.json (run with the tools environment's Python, which has matplotlib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(path: Path) -> None:
    data = json.loads(path.read_text())
    res = [r for r in data["results"] if r["workflow"] == "five"]
    systems = sorted({r["system"] for r in res}, key=lambda s: (s != "ours", s))
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in systems:
        pts = sorted((r["concurrency"], r["runs_per_s"]) for r in res if r["system"] == s)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    for s, wf in [
        ("ours", "five_local"),
        *((n, p["workflow"]) for n, p in data.get("in_process", {}).items()),
    ]:
        if wf == "five":
            continue  # already drawn: that peer's steps run in-process anyway
        pts = sorted(
            (r["concurrency"], r["runs_per_s"])
            for r in data["results"]
            if (r["system"], r["workflow"]) == (s, wf)
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--", label=f"{s} ({wf})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent callers (runs in flight)")
    ax.set_ylabel("completed runs/s")
    ax.set_title("5-step trivial workflow: throughput vs runs in flight")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_name("throughput.png"), dpi=110)
    levels = data["settings"]["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.6), sharey=True)
    for ax, c in zip(axes if len(levels) > 1 else [axes], levels, strict=True):
        for s in systems:
            r = next((r for r in res if r["system"] == s and r["concurrency"] == c), None)
            if r and r["cdf_sample_ms"]:
                xs = r["cdf_sample_ms"]
                ax.plot(xs, [i / (len(xs) - 1) for i in range(len(xs))], label=s)
        ax.set_xscale("log")
        ax.set_title(f"{c} caller(s)")
        ax.set_xlabel("start-to-completion ms")
        ax.grid(alpha=0.3)
    axes_list = axes if len(levels) > 1 else [axes]
    axes_list[0].set_ylabel("fraction of runs")
    axes_list[0].legend()
    fig.tight_layout()
    fig.savefig(path.with_name("latency_cdf.png"), dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
