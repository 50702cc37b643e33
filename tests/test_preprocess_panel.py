"""Panel matching: forgiving names, the CD3/CD34/CD33 trap, aliases, missing and ambiguous markers."""

from __future__ import annotations

import pytest

from rescue_gpu.config import PanelSpec
from rescue_gpu.errors import PanelError
from rescue_gpu.preprocess.panel import default_channels, is_scatter, match_channels, match_panel


@pytest.mark.parametrize("label", ["CD34 PerCP-Cy5.5", "CD34-PC5.5", "cd34", "CD34 PE-Cy7-A", "CD34_APC", "PE-Cy7 CD34"])
def test_fluorochrome_suffixes_and_case_are_ignored(label):
    channels = ["FSC-A", "FL1-A", "FL2-A"]
    markers = ["", "CD45 FITC", label]
    assert match_panel(channels, markers, PanelSpec(markers=("CD34", "CD45"))) == [2, 1]


def test_hla_dr_with_fluorochrome():
    channels = ["V500-A", "FITC-A"]
    assert match_panel(channels, ["HLA-DR V500", "CD3 FITC"], PanelSpec(markers=("HLA-DR",))) == [0]
    assert match_panel(channels, ["HLADR-V500", ""], PanelSpec(markers=("HLA-DR",))) == [0]


def test_cd3_cd33_cd34_are_kept_apart():
    channels = ["A", "B", "C"]
    markers = ["CD34 PerCP", "CD33 PE", "CD3 FITC"]
    panel = PanelSpec(markers=("CD3", "CD33", "CD34"))
    assert match_panel(channels, markers, panel) == [2, 1, 0]
    with pytest.raises(PanelError, match="'CD3' not found"):
        match_panel(channels[:2], markers[:2], PanelSpec(markers=("CD3",)))


def test_aliases_are_tried():
    panel = PanelSpec(markers=("CD117", "HLA-DR"), aliases={"CD117": ("C-KIT",), "HLA-DR": ("DR",)})
    assert match_panel(["X", "Y"], ["cKit PE", "DR APC"], panel) == [0, 1]


def test_pns_is_preferred_then_pnn_is_used():
    # $PnS wins when it matches; $PnN is the fall-back for a marker no $PnS names.
    assert match_panel(["CD45-A", "FL2"], ["", "CD45"], PanelSpec(markers=("CD45",))) == [1]
    assert match_panel(["CD45-A", "FL2"], ["", ""], PanelSpec(markers=("CD45",))) == [0]


def test_missing_marker_message_lists_the_file_parameters():
    with pytest.raises(PanelError) as err:
        match_panel(["FSC-A", "FITC-A", "PE-A"], ["", "CD45 FITC", "CD33"], PanelSpec(markers=("CD45", "CD34")))
    msg = str(err.value)
    assert "panel marker 'CD34' not found" in msg
    assert "The file has: 1 FSC-A, 2 FITC-A (CD45 FITC), 3 PE-A (CD33)" in msg
    assert "[panel.aliases]" in msg


def test_duplicate_pns_is_ambiguous_unless_one_is_exact():
    channels = ["FITC-A", "FITC-H", "PE-A"]
    with pytest.raises(PanelError) as err:
        match_panel(channels, ["CD3 FITC", "CD3 FITC", "CD19"], PanelSpec(markers=("CD3",)))
    assert "'CD3' is ambiguous" in str(err.value)
    assert "1 FITC-A (CD3 FITC), 2 FITC-H (CD3 FITC)" in str(err.value)
    # one exact label beats a prefix match: not ambiguous
    assert match_panel(channels, ["CD3", "CD3 FITC", "CD19"], PanelSpec(markers=("CD3",))) == [0]


def test_two_markers_on_one_parameter_is_an_error():
    panel = PanelSpec(markers=("HLA-DR", "DR"))
    with pytest.raises(PanelError, match="'HLA-DR' and 'DR' both match parameter 1"):
        match_panel(["APC-A"], ["HLA-DR APC"], panel)


def test_empty_panel_keeps_all_but_time_and_event_counters():
    channels = ["Time", "FSC-A", "SSC-A", "FITC-A", "Event #", "Event_length", "TIME2", "EventCount"]
    assert match_panel(channels, [""] * len(channels), PanelSpec()) == [1, 2, 3, 5]
    assert default_channels(["time", "FL1"]) == [1]


def test_scatter_channels_by_pnn():
    assert match_channels(["FSC-A", "SSC-A", "FITC-A"], ["ssc a", "FSC-A"]) == [1, 0]
    with pytest.raises(PanelError, match="scatter channel 'FSC-H' not found among the file's channels: FSC-A, SSC-A"):
        match_channels(["FSC-A", "SSC-A"], ["FSC-H"])


@pytest.mark.parametrize("name,expected", [("FSC-A", True), ("SSC-H", True), ("FS Log", True), ("FSC-Height", True),
                                           ("FL1-H", False), ("SSC LogH", True), ("FSCx", False)])
def test_is_scatter(name, expected):
    assert is_scatter(name) is expected
