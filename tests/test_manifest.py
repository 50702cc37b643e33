"""Manifests: every problem is listed at once, before any work starts."""

import pytest

from rescue_gpu.runner.manifest import read_manifest
from rescue_gpu.errors import ManifestError


def _csv(tmp_path, text):
    p = tmp_path / "manifest.csv"
    p.write_text(text)
    return p


def test_reads_rows_relative_to_manifest(tmp_path):
    p = _csv(tmp_path, "sample_id,path,patient_id,timepoint,label\ns1,a/s1.fcs,P1,diagnosis,positive\ns2,/abs/s2.fcs,P1,Follow-up,negative\n")
    rows = read_manifest(p)
    assert [r.sample_id for r in rows] == ["s1", "s2"]
    assert rows[0].path == tmp_path / "a" / "s1.fcs"
    assert str(rows[1].path) == "/abs/s2.fcs"
    assert rows[1].timepoint == "follow-up" and rows[1].label == "negative"


def test_missing_columns(tmp_path):
    with pytest.raises(ManifestError, match=r"missing column\(s\) path"):
        read_manifest(_csv(tmp_path, "sample_id,file\ns1,x.fcs\n"))


def test_all_bad_rows_listed(tmp_path):
    p = _csv(tmp_path, "sample_id,path,label,timepoint\ns1,x.fcs,positive,diagnosis\ns1,y.fcs,maybe,later\n,z.fcs,,\n")
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    msg = str(ei.value)
    assert "4 problem(s)" in msg
    assert "row 3: duplicate sample_id 's1' (first on row 2)" in msg
    assert "row 3: label 'maybe'" in msg and "row 3: timepoint 'later'" in msg
    assert "row 4: empty sample_id" in msg


def test_empty_and_absent(tmp_path):
    with pytest.raises(ManifestError, match="lists no samples"):
        read_manifest(_csv(tmp_path, "sample_id,path\n"))
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_directory_scan(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.fcs").write_bytes(b"")
    (tmp_path / "a.FCS").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    rows = read_manifest(tmp_path)
    assert [r.sample_id for r in rows] == ["a", "b/x"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .fcs files"):
        read_manifest(tmp_path / "empty")


def test_true_mrd_pct_is_optional_and_checked(tmp_path):
    rows = read_manifest(_csv(tmp_path, "sample_id,path,true_mrd_pct\ns1,a.fcs,0.25\ns2,b.fcs,\ns3,c.fcs,0\n"))
    assert [r.true_mrd_pct for r in rows] == [0.25, None, 0.0]
    assert read_manifest(_csv(tmp_path, "sample_id,path\ns1,a.fcs\n"))[0].true_mrd_pct is None
    with pytest.raises(ManifestError) as ei:
        read_manifest(_csv(tmp_path, "sample_id,path,true_mrd_pct\ns1,a.fcs,-1\ns2,b.fcs,high\ns3,c.fcs,nan\ns4,d.fcs,101\n"))
    msg = str(ei.value)
    assert "4 problem(s)" in msg and "row 3: true_mrd_pct 'high' is not a percentage in 0..100" in msg
