"""The flow network (nn.network over flow.record.build_model): shapes, head spec, local pretrained weights, conv1 adaptation, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rescue_gpu.config import HeadSpec
from rescue_gpu.errors import ModelError
from rescue_gpu.flow.record import build_model, head_layout
from rescue_gpu.nn.network import adapt_conv1_weight, build_head



@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict]:
    """A seeded torchvision resnet34 state dict saved as .pth and .safetensors (BN stats made non-trivial)."""
    from safetensors.torch import save_file
    from torchvision.models import resnet34

    torch.manual_seed(1)
    tv = resnet34(weights=None)
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    sd = tv.state_dict()
    d = tmp_path_factory.mktemp("tv")
    torch.save(sd, d / "resnet34.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "resnet34.safetensors"))
    return sd, {"pth": d / "resnet34.pth", "safetensors": d / "resnet34.safetensors"}


@pytest.mark.parametrize("c", [1, 3, 4])
def test_output_shapes(c: int) -> None:
    model = build_model(in_channels=c, head=HeadSpec()).eval()
    x = torch.randn(2, c, 32, 32)
    with torch.inference_mode():
        assert model.forward_features(x).shape == (2, 512)
        assert model(x).shape == (2,)
        assert model.forward_head(model.forward_features(x)).shape == (2,)
    assert model.backbone.conv1.in_channels == c
    conv = model.backbone.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((7, 7), (2, 2), (3, 3), None)
    assert isinstance(model.backbone.fc, nn.Identity)


def test_head_spec_widths_dropout_activation() -> None:
    head = build_head(head_layout(HeadSpec(hidden=(128, 64), dropout=0.2, activation="gelu")), in_features=512)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [(512, 128), (128, 64), (64, 1)]
    assert all(m.p == 0.2 for m in head if isinstance(m, nn.Dropout))
    single = build_head(head_layout(HeadSpec(hidden=(), dropout=0.0)), in_features=512)
    assert len(single) == 1 and (single[0].in_features, single[0].out_features) == (512, 1)


def test_dropout_active_in_train_only() -> None:
    model = build_model(in_channels=1, head=HeadSpec(hidden=(256,), dropout=0.5))
    f = torch.randn(8, 512)
    model.train()
    assert not torch.equal(model.forward_head(f), model.forward_head(f))
    model.eval()
    assert torch.equal(model.forward_head(f), model.forward_head(f))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_pretrained_rgb_matches_torchvision(tv_weights, fmt: str) -> None:
    from torchvision.models import resnet34

    sd, files = tv_weights
    model = build_model(in_channels=3, head=HeadSpec(), pretrained=files[fmt]).eval()
    tv = resnet34(weights=None)
    tv.load_state_dict(sd)
    tv.fc = nn.Identity()
    tv.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.forward_features(x), tv(x))


def test_conv1_adaptation_math() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 3, 7, 7)
    assert torch.equal(adapt_conv1_weight(w, 3), w)
    w1 = adapt_conv1_weight(w, 1)
    torch.testing.assert_close(w1, w.sum(dim=1, keepdim=True))
    w4 = adapt_conv1_weight(w, 4)
    assert w4.shape == (64, 4, 7, 7)
    for i in range(4):
        torch.testing.assert_close(w4[:, i], w.mean(dim=1) * 0.75)
    grey = torch.randn(1, 1, 16, 16)  # a grey image: every plane equal
    ref = F.conv2d(grey.repeat(1, 3, 1, 1), w, stride=2, padding=3)
    for c, wc in ((1, w1), (4, w4)):
        torch.testing.assert_close(F.conv2d(grey.repeat(1, c, 1, 1), wc, stride=2, padding=3), ref, rtol=1e-4, atol=1e-4)


def test_pretrained_grey_input_matches_rgb_net(tv_weights) -> None:
    sd, files = tv_weights
    rgb = build_model(in_channels=3, head=HeadSpec(), pretrained=files["pth"]).eval()
    one = build_model(in_channels=1, head=HeadSpec(), pretrained=files["pth"]).eval()
    assert not torch.equal(one.backbone.layer1[0].conv1.weight, build_model(in_channels=1, head=HeadSpec()).backbone.layer1[0].conv1.weight)
    torch.testing.assert_close(one.backbone.layer4[2].bn2.running_var, sd["layer4.2.bn2.running_var"])
    grey = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(one.forward_features(grey), rgb.forward_features(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-4)


def test_missing_pretrained_file_says_what_to_pass(tmp_path) -> None:
    with pytest.raises(ModelError, match="LOCAL torchvision resnet34 state dict"):
        build_model(in_channels=1, head=HeadSpec(), pretrained=tmp_path / "nope.pth")


def test_pretrained_wrong_keys_listed(tmp_path, tv_weights) -> None:
    sd, _ = tv_weights
    bad = {k: v for k, v in sd.items() if k != "layer1.0.conv1.weight"}
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match=r"missing keys \['layer1.0.conv1.weight'\].*unexpected keys \['extra.weight'\]"):
        build_model(in_channels=1, head=HeadSpec(), pretrained=tmp_path / "bad.pth")


def test_pretrained_refuses_pickled_objects(tmp_path) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "obj": HeadSpec()}, tmp_path / "pickled.pth")
    with pytest.raises(ModelError, match="cannot read weights"):
        build_model(in_channels=1, head=HeadSpec(), pretrained=tmp_path / "pickled.pth")


def test_bad_in_channels() -> None:
    with pytest.raises(ModelError):
        build_model(in_channels=0, head=HeadSpec())
