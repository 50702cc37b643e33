"""Tests of patient-level attention MIL (rescue_gpu.nn.mil, rescue_gpu.cells.mil) and the subtype simulator."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from rescue_gpu.cells.mil import (MEMBER_SEED_STEP, MilModelRecord, MilTrainSpec, confusion_intervals,
                                  cross_validate_mil, macro_f1_interval, score_bags, train_mil)
from rescue_gpu.cells.record import CellModelRecord, build_cell_model
from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.errors import ConfigError, ModelError
from rescue_gpu.nn.mil import GatedAttentionMIL, MilLayout, drop_instances, gated_attention, pad_bags, sample_bags
from rescue_gpu.simulate.cells.subtype import SUBTYPES, simulate_subtype_cohort, simulate_subtype_patient

CLASSES = ("a", "b", "c")


def _model(seed: int = 0, dim: int = 6, k: int = 3) -> GatedAttentionMIL:
    torch.manual_seed(seed)
    return GatedAttentionMIL(MilLayout(in_features=dim, n_classes=k, hidden=5, attention=4, dropout=0.0)).eval()


# --------------------------------------------------------------------------- pooling


def test_attention_sums_to_one_and_masked_cells_get_none():
    m = _model()
    x = torch.randn(3, 7, 6)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        _, a = m.forward_with_attention(x, mask)
    assert torch.allclose(a.sum(1), torch.ones(3), atol=1e-6)
    assert torch.all(a[1, 4:] == 0) and torch.all(a[1, :4] > 0)
    # a padded bag gives the same logits and attention as the bag alone
    with torch.no_grad():
        z_alone, a_alone = m.forward_with_attention(x[1:2, :4])
        z_pad, _ = m.forward_with_attention(x, mask)
    assert torch.allclose(z_pad[1], z_alone[0], atol=1e-6)
    assert torch.allclose(a[1, :4], a_alone[0], atol=1e-6)


def test_attention_is_permutation_equivariant_and_logits_invariant():
    m = _model(1)
    x = torch.randn(2, 9, 6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z, a = m.forward_with_attention(x)
        zp, ap = m.forward_with_attention(x[:, perm])
    assert torch.allclose(ap, a[:, perm], atol=1e-6)
    assert torch.allclose(zp, z, atol=1e-5)
    assert not torch.allclose(a[:, perm], a, atol=1e-3)  # the weights do differ between cells


def test_pooled_vector_equals_hand_computation():
    m = _model(2)
    x = np.random.default_rng(0).normal(size=(1, 5, 6)).astype(np.float32)
    p = {k: v.detach().numpy().astype(np.float64) for k, v in m.state_dict().items()}
    h = np.maximum(x[0] @ p["project.0.weight"].T + p["project.0.bias"], 0)
    gate = np.tanh(h @ p["V.weight"].T + p["V.bias"]) * (1 / (1 + np.exp(-(h @ p["U.weight"].T + p["U.bias"]))))
    s = gate @ p["w.weight"].T[:, 0] + p["w.bias"][0]
    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    z = (a[:, None] * h).sum(0)
    logits = z @ p["classifier.weight"].T + p["classifier.bias"]
    with torch.no_grad():
        zt, at = m.pool(torch.from_numpy(x))
        lt = m(torch.from_numpy(x))
    np.testing.assert_allclose(at[0].numpy(), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zt[0].numpy(), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lt[0].numpy(), logits, rtol=1e-5, atol=1e-5)
    # and the function form agrees with the module
    with torch.no_grad():
        hh = m.project(torch.from_numpy(x))
        np.testing.assert_allclose(gated_attention(hh, m.V, m.U, m.w)[0].numpy(), a, rtol=1e-5, atol=1e-6)


def test_mean_pooling_adds_the_bag_mean_of_real_cells():
    torch.manual_seed(4)
    m = GatedAttentionMIL(MilLayout(in_features=6, n_classes=3, hidden=5, attention=4, dropout=0.0,
                                    pooling="attention+mean")).eval()
    x = torch.randn(2, 7, 6)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        z, a = m.pool(x, mask)
        h = m.project(x)
    assert z.shape == (2, 10) and m.classifier.in_features == 10
    np.testing.assert_allclose(z[0, :5].numpy(), (a[0, :3, None] * h[0, :3]).sum(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(z[0, 5:].numpy(), h[0, :3].mean(0).numpy(), atol=1e-6)  # padding not averaged
    np.testing.assert_allclose(z[1, 5:].numpy(), h[1].mean(0).numpy(), atol=1e-6)
    # the mean half carries the share of shifted cells, which attention alone normalises away
    base = torch.zeros(1, 10, 6)
    few, many = base.clone(), base.clone()
    few[0, :1] += 3.0
    many[0, :6] += 3.0
    with torch.no_grad():
        assert not torch.allclose(m.pool(few)[0][0, 5:], m.pool(many)[0][0, 5:], atol=1e-3)
    with pytest.raises(ValueError, match="pooling"):
        MilLayout(in_features=6, n_classes=3, pooling="max")


def test_instance_dropout_masks_cells_in_train_mode_only():
    torch.manual_seed(5)
    layout = MilLayout(in_features=6, n_classes=3, hidden=5, attention=4, dropout=0.0, instance_dropout=0.5)
    m = GatedAttentionMIL(layout)
    plain = GatedAttentionMIL(MilLayout(in_features=6, n_classes=3, hidden=5, attention=4, dropout=0.0))
    plain.load_state_dict(m.state_dict())
    x = torch.randn(64, 20, 6)
    with torch.no_grad():
        m.train()
        _, a_train = m.forward_with_attention(x)
        m.eval()
        z_eval, a_eval = m.forward_with_attention(x)
        z_plain, _ = plain.eval().forward_with_attention(x)
    dropped = (a_train == 0).float().mean().item()
    assert 0.4 < dropped < 0.6                               # about half the cells out in train mode
    assert torch.all(a_eval > 0)                             # every cell counts in eval mode
    assert torch.allclose(z_eval, z_plain, atol=1e-6)        # and eval equals the model without it
    with pytest.raises(ValueError, match="instance_dropout"):
        MilLayout(in_features=6, n_classes=3, instance_dropout=1.0)


def test_drop_instances_keeps_one_real_cell_and_never_revives_padding():
    mask = torch.zeros(500, 4, dtype=torch.bool)
    mask[:, 2:] = True                                       # two real cells per bag, at the end
    torch.manual_seed(0)
    keep = drop_instances(mask, 0.9)
    assert torch.all(keep.sum(1) >= 1) and not torch.any(keep & ~mask)
    assert (keep.sum(1) == 1).float().mean().item() > 0.9     # P(both kept) = 0.01
    torch.manual_seed(0)
    assert torch.equal(drop_instances(mask, 0.9), keep)       # seeded by torch's generator


def test_sample_and_pad_bags():
    rng = np.random.default_rng(0)
    feats = [np.arange(10, dtype=np.float32).reshape(5, 2), np.ones((2, 2), np.float32)]
    bags = sample_bags(feats, 4, rng)
    assert bags.shape == (2, 4, 2)
    assert len({tuple(r) for r in bags[0]}) == 4          # enough cells: drawn without replacement
    assert np.all(bags[1] == 1)                            # too few: with replacement
    x, mask = pad_bags(feats)
    assert x.shape == (2, 5, 2) and mask.sum(1).tolist() == [5, 2] and np.all(x[1, 2:] == 0)
    with pytest.raises(ValueError, match="bag_size"):
        sample_bags(feats, 0, rng)


# --------------------------------------------------------------------------- training, record


def _planted(n_per_class: int, seed: int, n_cells: int = 20, dim: int = 8):
    """Bags of noise; class c > 0 bags carry 20-50 % cells shifted by +4 in feature c (class 0: none)."""
    rng = np.random.default_rng(seed)
    bags, y, planted = [], [], []
    for c in range(len(CLASSES)):
        for _ in range(n_per_class):
            f = rng.normal(size=(n_cells, dim)).astype(np.float32)
            bad = np.zeros(n_cells, bool)
            if c:
                bad[rng.permutation(n_cells)[:int(rng.uniform(0.2, 0.5) * n_cells)]] = True
                f[bad, c] += 4.0
            bags.append(f)
            y.append(c)
            planted.append(bad)
    return bags, np.array(y), planted


SPEC = MilTrainSpec(bag_size=12, repeats=8, batch_size=8, max_epochs=40, patience=10, hidden=16, attention=8,
                    dropout=0.25, learning_rate=5e-3, seed=0)


def test_cross_validated_mil_finds_the_class_and_attends_to_planted_cells():
    from rescue_gpu.nn.metrics import roc_auc

    bags, y, planted = _planted(12, seed=1)
    probs, att, fold = cross_validate_mil(bags, y, classes=CLASSES, folds=3, spec=SPEC)
    assert sorted(set(fold.tolist())) == [0, 1, 2]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert (probs.argmax(1) == y).mean() >= 0.85
    sub = y > 0
    scores = np.concatenate([a * a.size for a, s in zip(att, sub) if s])
    truth = np.concatenate([p for p, s in zip(planted, sub) if s])
    assert roc_auc(truth, scores) >= 0.85


def _cell_record(seed: int) -> CellModelRecord:
    torch.manual_seed(seed)
    pipe = load_cell_pipeline("smear-aml-subtype")
    net = build_cell_model(architecture="resnet18", in_channels=3, n_classes=len(pipe.classes.names))
    return CellModelRecord.from_pipeline(net.eval(), pipe)


def test_record_round_trips_and_rejects_another_cell_network(tmp_path):
    bags, y, _ = _planted(5, seed=2, dim=512)
    cell, other = _cell_record(0), _cell_record(1)
    rec, report = train_mil(bags, y, classes=CLASSES, cell_model_sha256=cell.sha256,
                            cell_model_checksum=cell.checksum,
                            spec=MilTrainSpec(bag_size=8, max_epochs=3, patience=3, hidden=8, attention=4))
    assert report.epochs == 3 and report.n_train + report.n_val == len(bags)
    path = rec.save(tmp_path / "mil")
    back = MilModelRecord.load_for(path, cell)
    assert back.sha256 == rec.sha256 and back.checksum == rec.checksum and back.classes == CLASSES
    p1, c1, a1 = score_bags(rec, bags[:4])
    p2, c2, a2 = score_bags(back, bags[:4])
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert (c1 == c2).all() and all(np.allclose(u, v) for u, v in zip(a1, a2))
    with pytest.raises(ModelError, match="cell network sha256 .* score with the cell model the MIL model was trained"):
        MilModelRecord.load_for(path, other)
    meta = json.loads((path / "model.json").read_text())
    meta["cell_model_sha256"] = other.sha256          # pointing the record at another network is caught
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="checksum"):
        MilModelRecord.load(path)


def test_ensemble_record_averages_members_and_round_trips(tmp_path):
    bags, y, _ = _planted(5, seed=6, dim=512)
    cell = _cell_record(0)
    spec = MilTrainSpec(bag_size=8, max_epochs=3, patience=3, hidden=8, attention=4, members=3,
                        pooling="attention+mean", instance_dropout=0.2)
    rec, report = train_mil(bags, y, classes=CLASSES, cell_model_sha256=cell.sha256, spec=spec)
    assert rec.members == 3 and rec.temperature == 1.0 and len(report.members) == 3
    # each member is what a single-network run with the member's seed trains
    singles = [train_mil(bags, y, classes=CLASSES, cell_model_sha256=cell.sha256,
                         spec=dataclasses.replace(spec, members=1, seed=spec.seed + MEMBER_SEED_STEP * m))[0]
               for m in range(3)]
    scored = [score_bags(r, bags) for r in singles]
    p, calls, att = score_bags(rec, bags)
    np.testing.assert_allclose(p, np.mean([s[0] for s in scored], 0), atol=1e-5)
    assert all(np.allclose(att[i], np.mean([s[2][i] for s in scored], 0), atol=1e-6) for i in range(len(bags)))
    back = MilModelRecord.load(rec.save(tmp_path / "ens"))
    assert back.members == 3 and back.layout.pooling == "attention+mean" and back.checksum == rec.checksum
    np.testing.assert_allclose(score_bags(back, bags)[0], p, atol=1e-6)
    with pytest.raises(ConfigError, match="members"):
        MilTrainSpec(members=0)


def test_training_is_seeded_and_single_network_records_keep_the_old_checksum(tmp_path):
    from rescue_gpu.artifacts import settings_checksum

    bags, y, _ = _planted(4, seed=7)
    spec = MilTrainSpec(bag_size=6, max_epochs=2, patience=2, hidden=4, attention=2, instance_dropout=0.3)
    a = train_mil(bags, y, classes=CLASSES, cell_model_sha256="x", spec=spec)[0]
    b = train_mil(bags, y, classes=CLASSES, cell_model_sha256="x", spec=spec)[0]
    c = train_mil(bags, y, classes=CLASSES, cell_model_sha256="x", spec=dataclasses.replace(spec, seed=1))[0]
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256    # bag draws, dropout and init follow the seed
    plain = train_mil(bags, y, classes=CLASSES, cell_model_sha256="x",
                      spec=dataclasses.replace(spec, pooling="attention", instance_dropout=0.0))[0]
    old_fields = {"classes": list(CLASSES), "layout": {"in_features": 8, "n_classes": 3, "hidden": 4, "attention": 2,
                                                       "dropout": 0.5},
                  "bag_size": 6, "temperature": float(plain.temperature), "cell_model_sha256": "x",
                  "cell_model_checksum": ""}
    assert plain.checksum == settings_checksum(plain.sha256, old_fields)
    # a record written before pooling / instance dropout existed (no such keys) loads as plain attention
    back = MilModelRecord.load(plain.save(tmp_path / "old"))
    assert "pooling" not in json.loads((tmp_path / "old" / "model.json").read_text())["layout"]
    assert back.layout.pooling == "attention" and back.checksum == plain.checksum
    new = MilModelRecord.load(a.save(tmp_path / "new"))
    assert new.layout.pooling == "attention+mean" and new.layout.instance_dropout == 0.3


def test_train_mil_refuses_bad_input():
    bags, y, _ = _planted(2, seed=3)
    with pytest.raises(Exception, match="one class per patient"):
        train_mil(bags, y[:-1], classes=CLASSES, cell_model_sha256="x", spec=SPEC)
    with pytest.raises(ConfigError, match="bag_size"):
        MilTrainSpec(bag_size=0)
    with pytest.raises(Exception, match="feature width|features"):
        score_bags(train_mil(bags, y, classes=CLASSES, cell_model_sha256="x",
                             spec=MilTrainSpec(max_epochs=1, patience=1, hidden=4, attention=2))[0],
                   [np.zeros((3, 5), np.float32)])


def test_patient_metrics_against_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 60)
    calls = np.where(rng.random(60) < 0.7, y, rng.integers(0, 5, 60))
    f1 = macro_f1_interval(y, calls, n_classes=5, n_boot=300, seed=0)
    assert f1["value"] == pytest.approx(f1_score(y, calls, average="macro"))
    assert f1["low"] <= f1["value"] <= f1["high"] and f1["high"] - f1["low"] > 0.02
    cm = confusion_intervals(y, calls, n_classes=5, n_boot=300, seed=0)
    np.testing.assert_array_equal(cm["counts"], sk_confusion(y, calls, labels=range(5)))
    np.testing.assert_allclose(cm["share"].sum(1), 1.0)
    assert np.all(cm["low"] <= cm["share"] + 1e-12) and np.all(cm["share"] <= cm["high"] + 1e-12)


# --------------------------------------------------------------------------- simulator


def test_subtype_patient_is_deterministic_with_an_exact_abnormal_share():
    a = simulate_subtype_patient("NPM1", 20, abnormal_share=0.3, size=32, seed=5)
    b = simulate_subtype_patient("NPM1", 20, abnormal_share=0.3, size=32, seed=5)
    c = simulate_subtype_patient("NPM1", 20, abnormal_share=0.3, size=32, seed=6)
    assert all(np.array_equal(u, v) for u, v in zip(a.images, b.images))
    assert not all(np.array_equal(u, v) for u, v in zip(a.images, c.images))
    assert a.abnormal.sum() == 6 and a.abnormal_share == pytest.approx(0.3)
    assert set(a.cell_types[a.abnormal]) == {"cup_like_blast"}
    assert not set(a.cell_types[~a.abnormal]) & {"MYO", "MOB"}   # normal white cells only
    ctrl = simulate_subtype_patient("control", 20, abnormal_share=0.5, size=32, seed=5)
    assert ctrl.abnormal.sum() == 0 and ctrl.abnormal_share == 0
    assert all(im.shape == (3, 32, 32) and im.dtype == np.uint8 for im in a.images)
    with pytest.raises(ConfigError, match="unknown subtype"):
        simulate_subtype_patient("AML", 5, abnormal_share=0.1)
    with pytest.raises(ConfigError, match="abnormal_share"):
        simulate_subtype_patient("NPM1", 5, abnormal_share=1.5)


def test_auer_rods_darken_the_cell():
    """RUNX1::RUNX1T1 and APL abnormal cells carry dark red-purple rods: more very dark red-dominant pixels."""
    def rod_pixels(subtype: str) -> float:
        p = simulate_subtype_patient(subtype, 30, abnormal_share=0.5, size=64, seed=7)
        bad = np.stack([im for im, ab in zip(p.images, p.abnormal) if ab]).astype(float)
        good = np.stack([im for im, ab in zip(p.images, p.abnormal) if not ab]).astype(float)
        rod = lambda x: ((x[:, 1] < 90) & (x[:, 0] > x[:, 2] + 10)).mean()  # noqa: E731
        return rod(bad) - rod(good)

    assert rod_pixels("RUNX1_RUNX1T1") > 0.002


def test_subtype_cohort_files_and_truth(tmp_path):
    s = simulate_subtype_cohort(tmp_path / "c", patients_per_class=2, cells_per_patient=10, size=32, seed=1)
    assert s.n_patients == 10 and s.n_cells == 100
    pats = list(csv.DictReader(open(s.patients_csv)))
    truth = list(csv.DictReader(open(s.truth_csv)))
    assert [p["subtype"] for p in pats[:5]] == list(SUBTYPES)
    for p in pats:
        rows = [t for t in truth if t["patient_id"] == p["patient_id"]]
        share = sum(int(t["abnormal"]) for t in rows) / len(rows)
        assert share == pytest.approx(float(p["abnormal_share"]))
        if p["subtype"] == "control":
            assert share == 0
        else:
            assert 0.1 <= share <= 0.6
    for t in truth[:12]:
        assert (tmp_path / "c" / f"{t['cell_id']}.png").is_file()
    again = simulate_subtype_cohort(tmp_path / "d", patients_per_class=2, cells_per_patient=10, size=32, seed=1)
    assert open(again.truth_csv).read() == open(s.truth_csv).read()
    assert (tmp_path / "d" / f"{truth[3]['cell_id']}.png").read_bytes() == \
        (tmp_path / "c" / f"{truth[3]['cell_id']}.png").read_bytes()
