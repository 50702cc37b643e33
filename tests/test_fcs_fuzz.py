"""The FCS reader under hostile input: a short deterministic fuzz run, and the harness itself.

The campaign reuses :mod:`rescue_gpu.fcs.fuzz`, the code behind ``benchmarks/fuzz_fcs.py``
(long campaigns): seed files (the synthetic ones always, the real corpus when it is beside
the checkout) mutated deterministically, each read in a forked child with a 5 s wall-clock
and a 4 GiB address-space limit. Nothing may come out but ``ok`` or a RescueError.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.errors import FcsFormatError
from rescue_gpu.fcs import fuzz, read_fcs
from tests.conftest import CORPUS

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fuzz harness forks a child per case")

CI_CASES = 300
CI_SEED = 11


@pytest.fixture(scope="module")
def seeds() -> list[fuzz.Seed]:
    """Synthetic seeds, then the corpus (when present): the order case numbers refer to."""
    return fuzz.synthetic_seeds() + fuzz.load_corpus(CORPUS)


def run_isolated(content: bytes, *, dataset: int = 0, timeout: float = 5.0) -> fuzz.Result:
    """Read ``content`` in a limited child, as a fuzz case (for inputs that once hung)."""
    seed = fuzz.Seed("inline", content)
    case = fuzz.Case(0, 0, "inline", ["none"], content, dataset=dataset)
    limit = fuzz.effective_address_limit(4 * fuzz.GIB)
    (result,) = fuzz.run_cases([case], seeds=[seed], timeout=timeout, address_limit=limit, compare=False)
    return result


def describe_failures(results: list[fuzz.Result]) -> str:
    lines = []
    for r in results:
        if r.outcome in fuzz.FAILURES:
            lines.append(f"case {r.index} ({r.seed_name}): {r.outcome} {r.error_type} {r.message[:300]}\n"
                         f"  mutations: {r.mutations}\n  reproduce: python benchmarks/fuzz_fcs.py --seed {CI_SEED} "
                         f"--case {r.index}\n{r.traceback[-1500:]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the CI campaign


def test_short_fuzz_campaign_only_reads_or_refuses(seeds: list[fuzz.Seed]) -> None:
    """0 exceptions other than RescueError, 0 mismatches, 0 time-outs, 0 memory kills."""
    limit = fuzz.effective_address_limit(4 * fuzz.GIB)
    results = list(fuzz.run_cases(fuzz.make_cases(seeds, CI_SEED, CI_CASES), seeds=seeds, timeout=5.0,
                                  address_limit=limit))
    summary = fuzz.summarize(results)
    assert len(results) == CI_CASES
    assert not summary["failures"], describe_failures(results)
    assert summary["counts"]["ok"] > 0 and summary["counts"]["refused"] > 0
    assert set(summary["refused_by_type"]) <= {"FcsFormatError"}


def test_cases_are_deterministic(seeds: list[fuzz.Seed]) -> None:
    for index in (0, 7, 123):
        a, b = fuzz.make_case(seeds, CI_SEED, index), fuzz.make_case(seeds, CI_SEED, index)
        assert a.data == b.data and a.mutations == b.mutations and a.dataset == b.dataset
    assert fuzz.make_case(seeds, CI_SEED, 1).data != fuzz.make_case(seeds, CI_SEED + 1, 1).data


def test_every_mutation_applies_to_a_synthetic_seed() -> None:
    """Each mutator produces a file from some synthetic seed (none is dead code)."""
    import random

    synthetic = fuzz.synthetic_seeds()
    for mutate, _ in fuzz.MUTATIONS:
        made = 0
        for k, seed in enumerate(synthetic):
            try:
                blob, desc, _benign = mutate(random.Random(k), seed.data, synthetic)
            except fuzz.NotApplicable:
                continue
            assert isinstance(blob, bytes) and desc
            made += 1
        assert made, mutate.__name__


def test_synthetic_seeds_read_cleanly() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for seed in fuzz.synthetic_seeds():
            path = Path(tmp) / Path(seed.name).name
            path.write_bytes(seed.data)
            fd = read_fcs(path)
            assert fd.n_events > 0 and not fd.extra["warnings"], seed.name
            if "mixed" in seed.name:
                assert fd.events.dtype == np.float64 and fd.events[:, 0].max() < 1024  # $P1R=1024 masks
            if "two-datasets" in seed.name:
                assert fd.n_datasets == 2 and read_fcs(path, dataset=1).events.dtype == np.float32
            if "supplemental" in seed.name:
                assert fd.keywords["$COM"] == "supplemental" and fd.spillover is not None


def test_benign_chain_keeps_data_set_0(seeds: list[fuzz.Seed]) -> None:
    """Appended copies of a file as a chain leave data set 0 exactly as it was."""
    import random

    base = fuzz.synthetic_seeds()[0]
    blob, desc, benign = fuzz.m_chain(random.Random(3), base.data, [base])
    assert benign and "chain of" in desc
    case = fuzz.Case(0, 0, base.name, [desc], blob, benign=True)
    (result,) = fuzz.run_cases([case], seeds=[base])
    assert result.outcome == "ok", result.message


# --------------------------------------------------------------------------- the harness classifies


def _patched_case(monkeypatch: pytest.MonkeyPatch, behaviour, *, timeout: float = 5.0) -> fuzz.Result:
    """Run one case with ``read_fcs`` replaced in the (forked) child by ``behaviour``."""
    monkeypatch.setattr(fuzz, "read_fcs", behaviour)
    seed = fuzz.synthetic_seeds()[0]
    case = fuzz.Case(0, 0, seed.name, ["patched"], seed.data)
    limit = fuzz.effective_address_limit(2 * fuzz.GIB)
    (result,) = fuzz.run_cases([case], seeds=[seed], timeout=timeout, address_limit=limit)
    return result


def test_harness_reports_a_crash_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_a, **_k):
        raise ValueError("invalid literal for int() with base 10: '\u00b3'")

    r = _patched_case(monkeypatch, crash)
    assert r.outcome == "crash" and r.error_type == "ValueError" and "crash" in r.traceback


def test_harness_reports_a_refusal_by_class(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path, **_k):
        raise FcsFormatError(path, "nope")

    r = _patched_case(monkeypatch, refuse)
    assert r.outcome == "refused" and r.error_type == "FcsFormatError"


def test_harness_kills_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _patched_case(monkeypatch, lambda *_a, **_k: time.sleep(30), timeout=0.5)
    assert r.outcome == "timeout" and r.wall_s < 5


def test_harness_reports_memory_exhaustion(monkeypatch: pytest.MonkeyPatch) -> None:
    def hog(*_a, **_k):
        return np.ones(8 * fuzz.GIB, dtype=np.uint8)

    assert _patched_case(monkeypatch, hog).outcome == "memory"


def test_harness_reports_a_memory_error_wrapped_in_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrapped(path, **_k):
        try:
            np.ones(8 * fuzz.GIB, dtype=np.uint8)
        except MemoryError as exc:
            raise FcsFormatError(path, "not enough memory") from exc

    assert _patched_case(monkeypatch, wrapped).outcome == "memory"


# --------------------------------------------------------------------------- inputs that once hung, isolated


def test_huge_par_without_datatype_isolated() -> None:
    """Once: a 170 kB file with a huge $PAR and no $DATATYPE grew past 3 GB in 60 s."""
    import random

    base = fuzz.synthetic_seeds()[0]
    for k in range(5):
        blob, desc, _ = fuzz.m_par_huge(random.Random(k), base.data, [base])
        r = run_isolated(blob)
        assert r.outcome == "refused" and "$PAR is" in r.message, (desc, r.outcome, r.message)
        assert r.wall_s < 2


def test_ten_thousand_stacked_headers_isolated() -> None:
    """Once: 46 s and 3.95 GB to read data set 0 of 10,000 HEADERs sharing one TEXT."""
    blob = fuzz.stacked_headers(fuzz.synthetic_seeds()[0].data, 10_000)
    r = run_isolated(blob)
    assert r.outcome == "ok" and r.wall_s < 2, (r.outcome, r.message)
    assert run_isolated(blob, dataset=1).outcome == "refused"


def test_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes; the reader must refuse it instead."""
    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    with pytest.raises(FcsFormatError, match="not a regular file"):
        read_fcs(fifo)


def test_campaign_script_runs_and_writes_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/fuzz_fcs.py`` (long campaigns) works: a tiny campaign, then one case reproduced."""
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_fcs.py"
    spec = importlib.util.spec_from_file_location("fuzz_fcs_script", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = tmp_path / "fuzz.json"
    assert module.main(["--n", "20", "--seed", "1", "--corpus", str(CORPUS), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["cases"] == 20 and sum(summary["counts"].values()) == 20 and summary["failures"] == []
    saved = tmp_path / "case.fcs"
    assert module.main(["--seed", "1", "--case", "3", "--corpus", str(CORPUS), "--save", str(saved)]) == 0
    assert saved.read_bytes() and "outcome:" in capsys.readouterr().out
