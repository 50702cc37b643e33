"""Tests of the procedural single-cell image simulator (rescue_gpu.simulate.cells)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.errors import ConfigError
from rescue_gpu.simulate.cells import (
    ASSAYS,
    PatientStyle,
    assay_channels,
    assay_classes,
    draw_labels,
    patient_style,
    simulate_cell_library,
    simulate_cells,
)

IFC = assay_classes("ifc")
SMEAR_SIZE = 96


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- measuring the images


def _border(planes: np.ndarray) -> np.ndarray:
    """``(N, k)`` border pixels of ``(N, h, w)`` planes."""
    return np.concatenate([planes[:, 0], planes[:, -1], planes[:, :, 0], planes[:, :, -1]], axis=1)


def _ifc_cell_masks(images: np.ndarray) -> np.ndarray:
    """The absorbing cell body in bright-field: >= 4 % darker than the border, holes filled."""
    bf = images[:, 0].astype(float)
    background = np.median(_border(bf), axis=1)[:, None, None]
    dark = ndimage.gaussian_filter(bf, (0, 1, 1)) < 0.96 * background
    return np.stack([ndimage.binary_fill_holes(m) for m in dark])


def _ifc_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per cell: area, mean dark-field signal inside (above the border level), darkest bright-field / background."""
    masks = _ifc_cell_masks(images)
    bf, df = images[:, 0].astype(float), images[:, 1].astype(float)
    bf_bg, df_bg = np.median(_border(bf), axis=1), np.median(_border(df), axis=1)
    return {"area": masks.sum(axis=(1, 2)).astype(float),
            "scatter": np.array([(d[m] - b).mean() for d, m, b in zip(df, masks, df_bg)]),
            "darkest": np.array([np.percentile(x[m], 5) / b for x, m, b in zip(bf, masks, bf_bg)])}


def _ifc_features(image: np.ndarray) -> list[float]:
    """A few hand-made features of one ifc cell, for the separability check."""
    s = _ifc_stats(image[None])
    mask = _ifc_cell_masks(image[None])[0]
    df = image[1][mask].astype(float)
    bf = image[0][mask].astype(float) / np.median(_border(image[None, 0].astype(float)))
    return [s["area"][0], s["scatter"][0], df.std(), np.percentile(df, 95), s["darkest"][0], bf.mean(), bf.std()]


def _nucleus(images: np.ndarray) -> np.ndarray:
    """Purple-violet nuclear stain in ``(N, 3, h, w)`` smear crops: dark green, blue above green."""
    r, g, b = (images[:, c].astype(float) for c in range(3))
    return (g < 115) & (b > g + 20)


def _centre(size: int, fraction: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) < fraction * size


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ifc_cells() -> dict[str, np.ndarray]:
    """40 ifc cells per class (typical patient, 48 px)."""
    labels = np.repeat(IFC, 40)
    images = np.stack(simulate_cells(labels, assay="ifc", size=48, seed=11))
    return {c: images[labels == c] for c in IFC}


@pytest.fixture(scope="module")
def smear_cells() -> dict[str, np.ndarray]:
    """24 smear cells of a few classes (typical patient, 96 px)."""
    classes = ("MYO", "NGS", "EOS", "LYT")
    labels = np.repeat(classes, 24)
    images = np.stack(simulate_cells(labels, assay="smear", size=SMEAR_SIZE, seed=5))
    return {c: images[labels == c] for c in classes}


# --------------------------------------------------------------------------- tables and errors


@pytest.mark.parametrize("assay, pipeline", [("ifc", "ifc-labelfree"), ("smear", "smear-cytomorphology")])
def test_classes_channels_and_leukaemic_classes_match_the_pipeline_files(assay: str, pipeline: str) -> None:
    pipe = load_cell_pipeline(pipeline)
    assert assay_classes(assay) == pipe.classes.names
    assert assay_channels(assay) == pipe.input.channels
    all_leukaemic = draw_labels(50, assay=assay, leukaemic_fraction=1.0, seed=0)
    assert set(all_leukaemic) == set(pipe.classes.leukaemic)


def test_unknown_names_raise_config_errors_that_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'ifc', 'smear'"):
        assay_classes("flow")
    with pytest.raises(ConfigError, match=r"neutrophil.*blast, lymphocyte, granulocyte, monocyte, erythroid"):
        simulate_cells(["blast", "neutrophil"], assay="ifc")
    with pytest.raises(ConfigError, match="NGS"):
        simulate_cells(["blast"], assay="smear")
    with pytest.raises(ConfigError, match="'tree', 'channel-tiffs', 'numpy'"):
        simulate_cell_library(tmp_path / "a", layout="zarr")
    with pytest.raises(ConfigError, match="channel-tiffs.*'tree' or 'numpy'"):
        simulate_cell_library(tmp_path / "b", assay="smear", layout="channel-tiffs")
    with pytest.raises(ConfigError, match="patient_style"):
        simulate_cells(["blast"], assay="ifc", style=patient_style("smear", seed=1))
    with pytest.raises(ConfigError, match=">= 16"):
        simulate_cells(["blast"], assay="ifc", size=8)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        draw_labels(10, assay="ifc", leukaemic_fraction=1.5, seed=0)
    with pytest.raises(ConfigError, match="proper subset"):
        draw_labels(10, assay="ifc", leukaemic_fraction=0.1, seed=0, leukaemic=["myeloma"])
    with pytest.raises(ConfigError, match="one per sample"):
        simulate_cell_library(tmp_path / "c", n_samples=2, fractions=[0.1])
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize("assay", ASSAYS)
def test_same_seeds_give_the_same_pixels_and_other_seeds_other_pixels(assay: str) -> None:
    labels = list(assay_classes(assay)) * 2
    size = 48 if assay == "smear" else None
    style = patient_style(assay, seed=2)
    a = simulate_cells(labels, assay=assay, style=style, size=size, seed=5)
    b = simulate_cells(labels, assay=assay, style=patient_style(assay, seed=2), size=size, seed=5)
    c = simulate_cells(labels, assay=assay, style=style, size=size, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.shape != z.shape or not np.array_equal(x, z) for x, z in zip(a, c))
    assert patient_style(assay, seed=2) == style != patient_style(assay, seed=3)


def test_a_cell_does_not_depend_on_cells_of_other_classes() -> None:
    alone = simulate_cells(["blast"] * 3, assay="ifc", seed=9)
    mixed = simulate_cells(["monocyte", "blast", "erythroid", "blast", "monocyte", "blast"], assay="ifc", seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(alone, mixed[1::2]))


def test_ifc_crops_are_uint16_two_planes_and_vary_in_size_like_ideas_exports() -> None:
    labels = draw_labels(80, assay="ifc", leukaemic_fraction=0.3, seed=1)
    cells = simulate_cells(labels, assay="ifc", style=patient_style("ifc", seed=4), seed=1)
    shapes = {c.shape for c in cells}
    assert all(c.dtype == np.uint16 and c.ndim == 3 and c.shape[0] == 2 for c in cells)
    assert all(36 <= h <= 64 and 36 <= w <= 64 for _, h, w in shapes)
    assert len(shapes) > 10 and any(h != w for _, h, w in shapes)
    assert max(int(c.max()) for c in cells) <= 4095
    fixed = simulate_cells(labels[:10], assay="ifc", size=40, seed=1)
    assert {c.shape for c in fixed} == {(2, 40, 40)}


def test_ifc_background_follows_the_patient_style() -> None:
    for seed in (3, 8):
        style = patient_style("ifc", seed=seed)
        cells = np.stack(simulate_cells(["lymphocyte"] * 20, assay="ifc", style=style, size=48, seed=0))
        assert np.median(_border(cells[:, 0].astype(float))) == pytest.approx(style.offset[0], rel=0.03)
        assert np.median(_border(cells[:, 1].astype(float))) == pytest.approx(style.offset[1], abs=3)


def test_smear_crops_are_rgb_uint8_224_by_default() -> None:
    (cell,) = simulate_cells(["NGS"], assay="smear", seed=0)
    assert cell.shape == (3, 224, 224) and cell.dtype == np.uint8
    small = simulate_cells(["MYO", "KSC"], assay="smear", size=64, seed=0)
    assert {c.shape for c in small} == {(3, 64, 64)}


def test_smear_patients_differ_in_staining_and_illumination() -> None:
    backgrounds = []
    for seed in (1, 2, 3):
        cells = np.stack(simulate_cells(["LYT"] * 6, assay="smear", style=patient_style("smear", seed=seed),
                                        size=64, seed=0)).astype(float)
        backgrounds.append(np.median(np.stack([_border(cells[:, c]) for c in range(3)]), axis=(1, 2)))
    spread = np.ptp(np.array(backgrounds), axis=0)
    assert spread.max() > 3
    assert all(r > 150 for bg in backgrounds for r in bg)   # a pale background still


def test_ifc_morphology_sizes_granularity_and_chromatin(ifc_cells: dict[str, np.ndarray]) -> None:
    stats = {c: _ifc_stats(images) for c, images in ifc_cells.items()}
    area = {c: s["area"].mean() for c, s in stats.items()}
    scatter = {c: s["scatter"].mean() for c, s in stats.items()}
    assert min(area["blast"], area["monocyte"]) > 1.5 * max(area["lymphocyte"], area["erythroid"])
    assert area["granulocyte"] > max(area["lymphocyte"], area["erythroid"])
    assert scatter["granulocyte"] > 2 * max(scatter["lymphocyte"], scatter["blast"], scatter["erythroid"])
    assert scatter["granulocyte"] > scatter["monocyte"] > scatter["blast"]
    # dense lymphocyte chromatin absorbs more than the fine, open chromatin of blasts
    assert stats["lymphocyte"]["darkest"].mean() < stats["blast"]["darkest"].mean() - 0.1
    # the size distributions overlap: some monocytes are smaller than some blasts
    assert stats["monocyte"]["area"].min() < stats["blast"]["area"].max()


def test_smear_morphology_colours_and_nuclei(smear_cells: dict[str, np.ndarray]) -> None:
    nuclei = {c: _nucleus(images) for c, images in smear_cells.items()}
    centre = _centre(SMEAR_SIZE, 0.15)

    def cytoplasm_red_minus_blue(c: str) -> float:
        images, keep = smear_cells[c].astype(float), centre[None] & ~nuclei[c]
        return float(np.mean([(im[0][k] - im[2][k]).mean() for im, k in zip(images, keep)]))

    def nucleus_green(c: str) -> float:
        return float(np.mean([im[1][k].mean() for im, k in zip(smear_cells[c].astype(float), nuclei[c])]))

    area = {c: n.sum(axis=(1, 2)).mean() for c, n in nuclei.items()}
    assert cytoplasm_red_minus_blue("EOS") > cytoplasm_red_minus_blue("NGS") + 20   # orange-red granules
    assert cytoplasm_red_minus_blue("MYO") < 0 < cytoplasm_red_minus_blue("NGS")   # blue vs pink cytoplasm
    assert area["MYO"] > 1.5 * area["NGS"]                                          # high N:C vs segments
    assert nucleus_green("LYT") < nucleus_green("MYO") - 10                         # dense vs fine chromatin


def test_held_out_patients_are_classifiable_but_not_perfectly() -> None:
    def dataset(patients: range) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(IFC, 30)
        features, y = [], []
        for p in patients:
            cells = simulate_cells(labels, assay="ifc", style=patient_style("ifc", seed=p), size=48, seed=100 + p)
            features += [_ifc_features(c) for c in cells]
            y += list(labels)
        return np.array(features), np.array(y)

    x_train, y_train = dataset(range(1, 4))
    x_test, y_test = dataset(range(50, 52))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    assert 0.6 < accuracy < 0.98, accuracy


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("n, fraction", [(400, 0.0), (400, 0.013), (333, 0.25), (10, 0.55), (7, 1.0)])
def test_draw_labels_has_the_exact_leukaemic_count(n: int, fraction: float) -> None:
    labels = draw_labels(n, assay="ifc", leukaemic_fraction=fraction, seed=3)
    assert labels.shape == (n,) and set(labels) <= set(IFC)
    assert int((labels == "blast").sum()) == round(n * fraction)
    assert np.array_equal(labels, draw_labels(n, assay="ifc", leukaemic_fraction=fraction, seed=3))


def test_draw_labels_uses_plausible_normal_proportions_and_custom_leukaemic_classes() -> None:
    normal = draw_labels(2000, assay="ifc", leukaemic_fraction=0.0, seed=1)
    counts = {c: int((normal == c).sum()) for c in IFC}
    assert counts["blast"] == 0 and max(counts, key=counts.get) == "granulocyte"
    assert all(counts[c] > 50 for c in IFC[1:])
    smear = draw_labels(300, assay="smear", leukaemic_fraction=0.1, seed=2, leukaemic=["PMO", "PMB", "MYO"])
    assert int(np.isin(smear, ["PMO", "PMB", "MYO"]).sum()) == 30
    assert {"NGS", "LYT", "MON"} <= set(smear)
    assert not np.array_equal(smear, draw_labels(300, assay="smear", leukaemic_fraction=0.1, seed=3,
                                                 leukaemic=["PMO", "PMB", "MYO"]))


# --------------------------------------------------------------------------- libraries


def _library(out: Path, **options) -> tuple[object, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    summary = simulate_cell_library(out, on_progress=lambda i, n: calls.append((i, n)), **options)
    return summary, calls


def test_tree_library_ifc(tmp_path: Path) -> None:
    summary, calls = _library(tmp_path, n_train_patients=2, cells_per_class=2, n_samples=3, cells_per_sample=20,
                              fractions=[0.0, 0.25, 0.55], seed=4)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert (summary.n_train_cells, summary.n_train_patients, summary.n_samples) == (20, 2, 3)
    assert summary.train_dir == tmp_path / "train" and "20 training cells" in str(summary)
    for cls in IFC:
        for pid in ("P001", "P002"):
            files = sorted((tmp_path / "train" / cls / pid).glob("*.tif"))
            assert len(files) == 2
    image = tifffile.imread(files[0])
    assert image.dtype == np.uint16 and image.ndim == 3 and image.shape[0] == 2
    rows = _read_csv(summary.samples_manifest)
    assert list(rows[0]) == ["sample_id", "path", "patient_id", "label", "true_fraction"]
    assert [r["label"] for r in rows] == ["negative", "positive", "positive"]
    assert [float(r["true_fraction"]) for r in rows] == [0.0, 0.25, 0.55]
    train_patients = {p.name for p in (tmp_path / "train").glob("*/*")}
    assert train_patients == {"P001", "P002"} and not train_patients & {r["patient_id"] for r in rows}
    truth = _read_csv(summary.truth)
    for row in rows:
        cells = [t for t in truth if t["sample_id"] == row["sample_id"]]
        stems = {p.stem for p in (tmp_path / row["path"]).glob("*.tif")}
        assert len(cells) == 20 and stems == {t["cell_id"] for t in cells}
        assert sum(t["class"] == "blast" for t in cells) == round(20 * float(row["true_fraction"]))


def test_channel_tiff_library_writes_one_tiff_per_channel(tmp_path: Path) -> None:
    summary, _ = _library(tmp_path, layout="channel-tiffs", n_train_patients=1, cells_per_class=1, n_samples=1,
                          cells_per_sample=6, fractions=[0.5])
    for cls in IFC:
        files = sorted(p.name for p in (tmp_path / "train" / cls / "P001").iterdir())
        assert len(files) == 2 and files[0].endswith("_Ch1.tif") and files[1].endswith("_Ch6.tif")
    ch1 = sorted((tmp_path / "samples" / "S001").glob("*_Ch1.tif"))
    ch6 = sorted((tmp_path / "samples" / "S001").glob("*_Ch6.tif"))
    assert len(ch1) == len(ch6) == 6 and np.squeeze(tifffile.imread(ch1[0])).ndim == 2
    ids = {t["cell_id"] for t in _read_csv(summary.truth)}
    assert ids == {p.name[: -len("_Ch1.tif")] for p in ch1}


def test_numpy_library_writes_fixed_size_stacks(tmp_path: Path) -> None:
    summary, _ = _library(tmp_path, layout="numpy", n_train_patients=2, cells_per_class=3, n_samples=2,
                          cells_per_sample=15, fractions=[0.2, 0.4])
    assert summary.train_dir == tmp_path / "train.npz"
    with np.load(summary.train_dir) as z:
        assert z["images"].shape == (30, 2, 64, 64) and z["images"].dtype == np.uint16
        assert list(z["channels"]) == ["Ch1", "Ch6"]
        assert {c: int((z["labels"] == c).sum()) for c in IFC} == dict.fromkeys(IFC, 6)
        assert set(z["patient_ids"]) == {"P001", "P002"} and len(set(z["cell_ids"])) == 30
    rows = _read_csv(summary.samples_manifest)
    assert [r["path"] for r in rows] == ["samples/S001.npy", "samples/S002.npy"]
    assert np.load(tmp_path / rows[1]["path"]).shape == (15, 2, 64, 64)
    truth = [t for t in _read_csv(summary.truth) if t["sample_id"] == "S002"]
    assert [t["cell_id"] for t in truth] == [str(i) for i in range(15)]
    assert sum(t["class"] == "blast" for t in truth) == 6


def test_smear_tree_library_writes_rgb_pngs_with_the_20_percent_cutoff(tmp_path: Path) -> None:
    summary, _ = _library(tmp_path, assay="smear", n_train_patients=1, cells_per_class=1, n_samples=2,
                          cells_per_sample=10, fractions=[0.2, 0.1], size=32)
    assert len(list((tmp_path / "train").glob("*/P001/*.png"))) == 15
    with Image.open(next((tmp_path / "samples" / "S001").glob("*.png"))) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    assert [r["label"] for r in _read_csv(summary.samples_manifest)] == ["positive", "negative"]
    truth = _read_csv(summary.truth)
    assert sum(t["class"] in ("MYO", "MOB") for t in truth if t["sample_id"] == "S001") == 2


def test_default_fractions_are_spread_and_libraries_are_reproducible(tmp_path: Path) -> None:
    options = dict(layout="numpy", n_train_patients=1, cells_per_class=1, n_samples=9, cells_per_sample=200,
                   size=32)
    first, _ = _library(tmp_path / "a", seed=7, **options)
    again, _ = _library(tmp_path / "b", seed=7, **options)
    other, _ = _library(tmp_path / "c", seed=8, **options)
    fractions = np.array(first.fractions)
    assert fractions.min() >= 0 and fractions.max() <= 0.6
    assert (fractions < 0.02).sum() >= 2 and (fractions > 0.25).sum() >= 2
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert first.fractions == again.fractions != other.fractions
    assert isinstance(patient_style("ifc", seed=1), PatientStyle)
