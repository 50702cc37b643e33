"""``python -m rescue_gpu.simulate.labb --out DIR --patients N --events E --seed S``."""

from __future__ import annotations

import argparse
import json
import sys

from .cohort import simulate_labb_cohort


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, write the cohort, print its summary as JSON."""
    ap = argparse.ArgumentParser(prog="python -m rescue_gpu.simulate.labb", description=__doc__)
    ap.add_argument("--out", required=True, help="cohort folder")
    ap.add_argument("--patients", type=int, required=True, help="leukaemic patients")
    ap.add_argument("--events", type=int, default=20000, help="events per sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controls", type=int, default=None, help="control donors (default max(2, patients // 2))")
    ap.add_argument("--mrd-min", type=float, default=0.001, help="lowest MRD-positive blast share")
    ap.add_argument("--mrd-max", type=float, default=0.05, help="highest MRD-positive blast share")
    a = ap.parse_args(argv)
    try:
        summary = simulate_labb_cohort(a.out, n_patients=a.patients, n_events=a.events, seed=a.seed,
                                       n_controls=a.controls, mrd=(a.mrd_min, a.mrd_max))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
