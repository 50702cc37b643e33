"""Cohort plot of estimated vs true MRD % from ``benchmarks/eval_mrd.py``'s ``per_sample.csv``.

    python benchmarks/plot_mrd.py /tmp/eval_mrd/per_sample.csv /tmp/eval_mrd/mrd_vs_truth.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main(src: str, out: str) -> None:
    df = pd.read_csv(src)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    floor = 1e-3  # MRD % plotted at this floor when 0
    for col, colour in (("dfn_pct", "grey"), ("laip_pct", "crimson")):
        t = np.maximum(df["true_mrd_pct"].to_numpy(), floor)
        e = np.maximum(df[col].to_numpy(), floor)
        ok = np.isfinite(e)
        ax.scatter(t[ok], e[ok], s=8, alpha=0.6, color=colour, label=col.replace("_pct", ""))
    ax.plot([floor, 100], [floor, 100], ls="--", lw=0.8, color="black")
    ax.axhline(0.1, lw=0.6, color="steelblue")
    ax.axvline(0.1, lw=0.6, color="steelblue")
    ax.set(xscale="log", yscale="log", xlabel="true MRD % (simulated; 0 drawn at 0.001)",
           ylabel="estimated MRD %", title="Estimated vs true MRD % (simulated)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
