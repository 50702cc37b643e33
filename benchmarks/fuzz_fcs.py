"""Fuzz campaign: the FCS reader against mutated corpus files, each read in a limited child.

Every case is a seed file (the real corpus plus a few synthetic files) with one to three
mutations (see :mod:`rescue_gpu.fcs.fuzz`), read by ``read_fcs`` in a forked child with a
wall-clock limit (``--timeout``, 5 s) and an address-space limit (``--mem-gb``, 4 GiB).
Outcomes: ``ok``; ``refused`` (a RescueError; the summary counts them by class);
``crash`` (any other exception); ``mismatch`` (benign mutations changed data set 0);
``timeout``; ``memory`` (MemoryError, or the child killed); ``died`` (no report). The
summary and every non-ok/non-refused case (with its mutations and traceback) go to
``--json``; the exit status is 1 when there is any such case.

Cases are rebuilt from ``--seed`` and their number alone, so one can be re-run in this
process, with a full traceback, and its file saved::

    python benchmarks/fuzz_fcs.py --n 5000 --seed 0 --jobs 1 --json fuzz.json
    python benchmarks/fuzz_fcs.py --seed 0 --case 1234 --save case-1234.fcs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rescue_gpu.fcs import fuzz

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "fcs-corpus"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="number of cases (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--start", type=int, default=0, help="first case number (default 0)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"seed files (default {DEFAULT_CORPUS})")
    parser.add_argument("--json", type=Path, default=None, help="write the summary and failures here")
    parser.add_argument("--jobs", type=int, default=1, help="children at a time (default 1)")
    parser.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds per case (default 5)")
    parser.add_argument("--mem-gb", type=float, default=4.0, help="RLIMIT_AS per child in GiB (default 4)")
    parser.add_argument("--case", type=int, default=None, help="re-run this one case in this process")
    parser.add_argument("--save", type=Path, default=None, help="with --case: write the mutated file here")
    return parser.parse_args(argv)


def load_seeds(corpus: Path) -> list[fuzz.Seed]:
    """Synthetic seeds, then the corpus (sorted): the order every case number refers to."""
    seeds = fuzz.synthetic_seeds() + fuzz.load_corpus(corpus)
    if not (corpus / "truth.json").exists():
        print(f"note: no corpus at {corpus}; using the {len(seeds)} synthetic seeds only", file=sys.stderr)
    return seeds


def reproduce(seeds: list[fuzz.Seed], args: argparse.Namespace) -> int:
    """Re-run case ``args.case`` in this process and print its outcome (and traceback)."""
    case = fuzz.make_case(seeds, args.seed, args.case)
    print(f"case {case.index}: seed {case.seed_name}, data set {case.dataset}, only_text={case.only_text}, "
          f"benign={case.benign}")
    for m in case.mutations:
        print(f"  {m}")
    if args.save is not None:
        args.save.write_bytes(case.data)
        print(f"  saved {len(case.data)} bytes to {args.save}")
    with tempfile.TemporaryDirectory() as tmp:
        seed_path = Path(tmp) / "seed.fcs"
        seed_path.write_bytes(seeds[case.seed].data)
        result = fuzz.run_inline(case, tmp, str(seed_path))
    print(f"outcome: {result.outcome} {result.error_type} {result.message}")
    if result.traceback:
        print(result.traceback)
    return 1 if result.outcome in fuzz.FAILURES else 0


def print_summary(summary: dict, wall: float, command: str) -> None:
    """Counts by outcome, refusals by class, and the failures, for the terminal."""
    print(f"# {command}")
    print(f"# {summary['cases']} cases in {wall:.1f} s; slowest case {summary['max_wall_s']:.2f} s, "
          f"largest child RSS {summary['max_rss_mb']:.0f} MiB (includes the parent's pages)")
    for outcome, count in summary["counts"].items():
        print(f"{outcome:<10} {count:>6}")
    for name, count in summary["refused_by_type"].items():
        print(f"  refused as {name}: {count}")
    for f in summary["failures"][:20]:
        print(f"FAIL case {f['index']} ({f['seed_name']}): {f['outcome']} {f['error_type']} {f['message'][:200]}")
        for m in f["mutations"]:
            print(f"    {m}")


def main(argv: list[str] | None = None) -> int:
    """Run the campaign (or reproduce one case); returns the exit status."""
    args = parse_args(argv)
    seeds = load_seeds(args.corpus)
    if args.case is not None:
        return reproduce(seeds, args)
    limit = fuzz.effective_address_limit(int(args.mem_gb * fuzz.GIB))
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    t0 = time.perf_counter()
    results = []
    cases = fuzz.make_cases(seeds, args.seed, args.n, args.start)
    for r in fuzz.run_cases(cases, seeds=seeds, jobs=args.jobs, timeout=args.timeout, address_limit=limit):
        results.append(r)
        if len(results) % 500 == 0:
            bad = sum(x.outcome in fuzz.FAILURES for x in results)
            print(f"  {len(results)}/{args.n} cases, {bad} failures, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - t0
    summary = fuzz.summarize(results)
    summary.update(command=command, seed=args.seed, start=args.start, n=args.n, jobs=args.jobs, wall_s=round(wall, 1),
                   timeout_s=args.timeout, address_limit_bytes=limit, seeds=len(seeds))
    print_summary(summary, wall, command)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"# summary and failures written to {args.json}")
    return 1 if any(r.outcome in fuzz.FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
