"""Models: registry and factory, parameter counts of the standard architectures, shapes, errors, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustfast as rf
from robustfast import models
from robustfast.models import PreActResNet, SmallCNN, WideResNet, timm_models

# Reference parameter counts for 10 classes and 3 input channels (PreAct ResNet-18 of Wong et al. 2020;
# the WideResNets of Madry et al./TRADES/RobustBench).
PARAMS = {
    "preact_resnet18": 11_172_170,
    "preact_resnet18_wong": 11_172_170,
    "preact_resnet18_zerograd": 11_172_170,
    "preact_resnet18_gradalign": 11_172_170 - 2 * 512,  # no final BatchNorm
    "wrn_16_4": 2_748_890,
    "wrn_28_10": 36_479_194,
    "wrn_34_10": 46_160_474,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_list_models_and_aliases() -> None:
    names = models.list_models()
    assert {"preact_resnet18", "wrn_28_10", "wrn_34_10", "wrn_16_4", "small_cnn"} <= set(names)
    assert names == sorted(names)
    assert models.list_models("wrn_34*") == ["wrn_34_10", "wrn_34_20"]
    assert type(models.create("PRN18")) is PreActResNet  # alias, case-insensitive
    assert "timm:vit_base_patch16_224" in models.list_models("timm:vit_base_patch16_2*", include_timm=True)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_reference(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        assert n_params(models.create(name)) == PARAMS[name]


def test_parameter_counts_follow_num_classes_and_in_chans() -> None:
    with torch.device("meta"):
        assert n_params(models.create("preact_resnet18", num_classes=100)) == PARAMS["preact_resnet18"] + 90 * 513
        # the stem convolution is the only layer that sees the input channels (3x3 kernels, 64 or 16 filters)
        assert n_params(models.create("preact_resnet18", in_chans=1)) == PARAMS["preact_resnet18"] - 2 * 9 * 64
        assert n_params(models.create("wrn_28_10", in_chans=1)) == PARAMS["wrn_28_10"] - 2 * 9 * 16


@pytest.mark.parametrize("name", ["wrn_28_10", "wrn_34_10"])
def test_large_wideresnet_output_shape(name: str) -> None:
    with torch.device("meta"):
        model = models.create(name, num_classes=100).eval()
        assert model(torch.empty(2, 3, 32, 32)).shape == (2, 100)
        assert model.fc.in_features == 640 and len(model.block1) == (model.depth - 4) // 6


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("preact_resnet18", {"num_classes": 10, "in_chans": 3}, (2, 3, 32, 32)),
        ("preact_resnet18", {"num_classes": 7, "in_chans": 1}, (2, 1, 16, 16)),  # any size: global pooling
        ("wrn_16_4", {"num_classes": 100, "in_chans": 3}, (2, 3, 16, 16)),
        ("small_cnn", {"num_classes": 10, "in_chans": 1}, (3, 1, 8, 8)),
        ("small_cnn", {"num_classes": 10, "in_chans": 1}, (3, 1, 28, 28)),
    ],
)
def test_forward_shapes_and_gradients(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = models.create(name, **kwargs)
    x = torch.rand(*shape, requires_grad=True)
    out = model(x)
    assert out.shape == (shape[0], kwargs["num_classes"]) and torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0  # differentiable w.r.t. the input, as attacks need


def test_preact_resnet18_layout() -> None:
    model = models.create("preact_resnet18")
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2, 2, 2, 2]
    # projection shortcuts only where the width/stride changes, bias-free and without BatchNorm
    shortcuts = [b.shortcut for s in (model.layer1, model.layer2, model.layer3, model.layer4) for b in s]
    assert [sc is not None for sc in shortcuts] == [False, False, True, False, True, False, True, False]
    assert all(sc.bias is None for sc in shortcuts if sc is not None)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)


PREACT = ["preact_resnet18_zerograd", "preact_resnet18_wong", "preact_resnet18_gradalign"]


def _shortcut_inputs(model: PreActResNet, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each block with a projection: (block input, relu(bn1(block input)), what the projection received)."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    handles = []
    blocks = [b for s in (model.layer1, model.layer2, model.layer3, model.layer4) for b in s if b.shortcut is not None]
    for b in blocks:
        inputs: dict[str, torch.Tensor] = {}
        handles.append(b.register_forward_pre_hook(lambda m, a, d=inputs: d.__setitem__("x", a[0])))
        handles.append(b.bn1.register_forward_hook(lambda m, a, out, d=inputs: d.__setitem__("act", out.relu())))
        handles.append(b.shortcut.register_forward_pre_hook(lambda m, a, d=inputs: d.__setitem__("sc", a[0])))
        seen.append(inputs)  # type: ignore[arg-type]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return [(d["x"], d["act"], d["sc"]) for d in seen]  # type: ignore[index]


@pytest.mark.parametrize(("name", "expected"), [(PREACT[0], "activated"), (PREACT[1], "raw"), (PREACT[2], "raw")])
def test_preact_variants_feed_the_projection_shortcut(name: str, expected: str) -> None:
    torch.manual_seed(0)
    model = models.create(name)
    records = _shortcut_inputs(model, torch.rand(2, 3, 16, 16))
    assert len(records) == 3  # layer2[0], layer3[0], layer4[0]
    for x, act, sc in records:
        assert not torch.equal(x, act)  # the two candidates differ, so the check discriminates
        assert torch.equal(sc, act if expected == "activated" else x)
    assert all(b.shortcut_from == expected for s in (model.layer1, model.layer4) for b in s)


def test_preact_variants_final_bn_and_features() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    for name in PREACT:
        model = models.create(name).eval()
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        with torch.no_grad():
            feats = model.forward_features(x)
        assert feats.shape == (4, 512)
        if name.endswith("gradalign"):
            # GradAlign's code pools the last block's residual sum: no BN, no ReLU, negative features occur
            assert model.bn is None and n_bn == 16 and not model.final_bn
            assert (feats < 0).any()
            assert not any(k.startswith("bn.") for k in model.state_dict())
        else:
            assert isinstance(model.bn, nn.BatchNorm2d) and n_bn == 17 and (feats >= 0).all()


def test_preact_variant_argument_and_aliases() -> None:
    assert models.list_models("preact*") == ["preact_resnet18", *sorted(PREACT)]
    assert models.create("preact_resnet18").variant == "zerograd"  # default: unchanged network
    for variant, expected in [("wong", "wong"), ("GradAlign", "gradalign"), ("seat", "zerograd"), ("n-fgsm", "wong")]:
        assert models.create("preact_resnet18", variant=variant).variant == expected
    for alias, expected in [("preact_resnet18_seat", "zerograd"), ("preact_resnet18_multigrad", "zerograd")]:
        assert models.create(alias).variant == expected
    for alias in ("preact_resnet18_nfgsm", "preact_resnet18_advlc"):
        assert models.create(alias).variant == "wong"
    with pytest.raises(rf.RobustfastError, match=r"PreAct ResNet variant 'gradalgn'\. Did you mean 'gradalign'"):
        models.create("preact_resnet18", variant="gradalgn")
    with pytest.raises(rf.RobustfastError, match=r"unknown keyword 'variant'\. It takes no keywords"):  # named variants
        models.create("preact_resnet18_wong", variant="gradalign")
    text = repr(models.create("prn18", variant="gradalign"))
    assert "variant='gradalign', shortcut_from='raw', final_bn=False" in text


def test_preact_variants_keep_state_dict_keys() -> None:
    torch.manual_seed(0)
    zerograd, wong, gradalign = (models.create(n) for n in PREACT)
    assert list(zerograd.state_dict()) == list(wong.state_dict())
    assert list(gradalign.state_dict()) == [k for k in zerograd.state_dict() if not k.startswith("bn.")]
    wong.load_state_dict(zerograd.state_dict())  # same parameters, different function
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(wong.eval()(x), zerograd.eval()(x))


def test_preact_gradalign_he_init_statistics() -> None:
    torch.manual_seed(0)
    model = models.create("preact_resnet18_gradalign")
    # GradAlign's utils.initialize_weights: conv N(0, 2 / (k * k * out)), linear N(0, 2 / in), biases 0
    for conv, fan_out in [(model.conv1, 9 * 64), (model.layer4[1].conv2, 9 * 512), (model.layer4[0].shortcut, 512)]:
        w = conv.weight
        assert abs(w.mean().item()) < 0.1 * w.std().item()
        assert abs(w.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.05
    assert abs(model.linear.weight.std().item() / (2 / 512) ** 0.5 - 1) < 0.05
    assert torch.equal(model.linear.bias, torch.zeros(10))
    # the other variants keep PyTorch's defaults: kaiming_uniform(a=sqrt(5)), std = 1 / sqrt(3 * fan_in)
    default = models.create("preact_resnet18_wong")
    w = default.layer4[1].conv2.weight
    assert abs(w.std().item() / (1 / (3 * 9 * 512)) ** 0.5 - 1) < 0.05
    assert w.abs().max().item() <= (1 / (9 * 512)) ** 0.5  # uniform: bounded, unlike the normal init
    assert default.linear.bias.abs().sum() > 0


@pytest.mark.parametrize("name", PREACT)
def test_preact_variants_forward_shape_any_size(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, num_classes=7, in_chans=1)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    assert g.abs().sum() > 0


# preset -> the variant of the official code behind its numbers
PRESET_VARIANTS = {
    "gradalign-cifar10-eps8": "gradalign",
    "rs-cifar10-eps8": "gradalign",  # numbers and schedule from GradAlign's re-run (its Table 4)
    "pgd10-cifar10-eps8": "gradalign",  # likewise
    "zerograd-cifar10-eps8": "zerograd",
    "multigrad-cifar10-eps8": "zerograd",
    "seat-cifar10-eps8": "zerograd",
    "nfgsm-cifar10-eps8": "wong",
    "advlc-cifar10": "wong",
    "advlc-swa-cifar10": "wong",
}


def test_presets_use_their_papers_preact_variant() -> None:
    from robustfast.config import list_presets, load_preset

    found, implicit = {}, []
    for name in list_presets():
        cfg = load_preset(name)
        if "preact" in str(cfg.get("model", "")):
            with torch.device("meta"):
                found[name] = models.create(cfg["model"], **cfg.get("model_kwargs", {})).variant
            if cfg["model"] == "preact_resnet18" and "variant" not in cfg.get("model_kwargs", {}):
                implicit.append(name)
    assert PRESET_VARIANTS.items() <= found.items()
    assert not implicit, f"presets must name their paper's PreAct variant explicitly: {implicit}"


def test_wideresnet_dropout_and_init() -> None:
    torch.manual_seed(0)
    model = models.create("wrn_16_4", dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 6 and all(d.p == 0.3 for d in drops)  # one per block, (16 - 4) / 6 = 2 blocks x 3 stages
    assert not any(isinstance(m, nn.Dropout) for m in models.create("wrn_16_4").modules())
    assert torch.equal(model.fc.bias, torch.zeros(10))
    conv = model.block3[0].conv2  # He fan-out init: std = sqrt(2 / (3 * 3 * 256))
    assert abs(conv.weight.std().item() - (2 / (9 * 256)) ** 0.5) < 0.002
    x = torch.rand(2, 3, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout active in train mode
    model.eval()
    assert torch.equal(model(x), model(x))


def test_wideresnet_any_valid_depth_and_bad_depth() -> None:
    with torch.device("meta"):
        assert len(WideResNet(depth=22, widen_factor=2).block2) == 3
    with pytest.raises(rf.RobustfastError, match="6n \\+ 4"):
        WideResNet(depth=30)
    with pytest.raises(rf.RobustfastError, match="dropout"):
        models.create("wrn_16_4", dropout=1.0)


def test_normalize_wrapper() -> None:
    torch.manual_seed(0)
    model = models.create("small_cnn", in_chans=3, normalize="cifar10").eval()
    assert isinstance(model.normalize, models.Normalize) and isinstance(model.model, SmallCNN)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(models.CIFAR10_MEAN))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(models.CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(models.CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.model((x - mean) / std), atol=1e-6)
    custom = models.create("small_cnn", in_chans=1, normalize=(0.5, 0.25))
    assert custom.normalize.std.flatten().tolist() == [0.25]
    assert models.resolve_normalize(([0.5], [0.25]), 3) == ((0.5,) * 3, (0.25,) * 3)  # broadcast
    assert models.resolve_normalize("CIFAR-100", 3) == (models.CIFAR100_MEAN, models.CIFAR100_STD)
    assert not isinstance(models.create("small_cnn"), nn.Sequential)  # normalize=None: the bare network


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "wrn_28_01"}, "Did you mean 'wrn_28_10'"),
        ({"name": "preact_resnet_18"}, "Did you mean 'preact_resnet18'"),
        (
            {"name": "resnet18"},
            r"'resnet18'\. timm has a model of that name: use 'timm:resnet18'.*Did you mean "
            r"'resnet18_cifar'",
        ),
        ({"name": "timm:vit_base_patch16_22"}, "Did you mean 'timm:vit_base_patch16_224'"),
        ({"name": "wrn_28_10", "num_classes": 10.0}, "num_classes must be a positive int"),
        ({"name": "wrn_28_10", "num_classes": True}, "num_classes must be a positive int"),
        ({"name": "wrn_28_10", "num_classes": 0}, "num_classes must be a positive int"),
        ({"name": "wrn_28_10", "in_chans": "3"}, "in_chans must be a positive int"),
        ({"name": "wrn_28_10", "normalize": "cifar"}, "Unknown normalize='cifar'"),
        ({"name": "wrn_28_10", "normalize": ((0.5, 0.5), (1.0, 1.0))}, "2 means and 2 stds, but in_chans=3"),
        ({"name": "wrn_28_10", "normalize": ((0.5,), (0.0,))}, "std must be positive"),
        ({"name": "wrn_28_10", "normalize": ((0.5,) * 3, (0.2,) * 4)}, "3 means and 4 stds"),
        ({"name": "wrn_28_10", "normalize": ("a", "b")}, "must hold numbers"),
        ({"name": "wrn_28_10", "normalize": 0.5}, r"dataset name or a \(mean, std\) pair"),
        (
            {"name": "wrn_28_10", "drop_rate": 0.3},
            r"unknown keyword 'drop_rate'. Did you mean 'dropout'\? Valid keywords: dropout",
        ),
        ({"name": "timm:resnet10t", "img_sz": 32}, "rejected an option"),
        ({"name": "wrn_28_10", "pretrained": True}, "No pretrained weights .* checkpoint="),
        ({"name": 18}, "model name must be a str"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        models.create(**kwargs)


def test_checkpoint_roundtrip_bare_and_wrapped(tmp_path) -> None:
    torch.manual_seed(0)
    src = models.create("small_cnn", in_chans=3, normalize="cifar10")
    src.model.features[1].running_mean.fill_(0.5)  # buffers travel too
    torch.save(src.state_dict(), tmp_path / "wrapped.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, tmp_path / "bare.pt")
    x = torch.rand(2, 3, 16, 16)
    for ckpt in ("wrapped.pt", "bare.pt"):
        torch.manual_seed(1)  # a different init, overwritten by the checkpoint
        dst = models.create("small_cnn", in_chans=3, normalize="cifar10", checkpoint=tmp_path / ckpt)
        assert torch.equal(dst.eval()(x), src.eval()(x))
    # pretrained=True with a checkpoint: the checkpoint wins, no hub access
    assert models.create("small_cnn", in_chans=3, pretrained=True, checkpoint=tmp_path / "bare.pt") is not None


def test_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(rf.RobustfastError, match="does not exist"):
        models.create("small_cnn", checkpoint=tmp_path / "missing.pt")
    (tmp_path / "page.pt").write_text("<html>Google Drive quota exceeded</html>")  # a classic failed download
    with pytest.raises(rf.RobustfastError, match=r"could not read weights file.*not a torch file"):
        models.create("small_cnn", checkpoint=tmp_path / "page.pt")
    torch.save(models.create("small_cnn", num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(rf.RobustfastError, match=r"do not fit this model \(2 shape\(s\) differ, e\.g\. classifier"):
        models.create("small_cnn", num_classes=10, checkpoint=tmp_path / "five.pt")


def test_timm_vit_b16_param_counts_and_cifar_forward() -> None:
    torch.manual_seed(0)
    vit = models.create(
        "timm:vit_base_patch16_224", img_size=32, patch_size=4, normalize="cifar10", weight_init="skip"
    ).eval()
    n32 = n_params(vit)
    # ViT-B/16 at 224 differs only in the position embedding (197 vs 65 tokens) and the patch embedding
    # (16x16 vs 4x4 kernels), both of width 768
    assert n32 + (197 - 65) * 768 + 3 * 768 * (16 * 16 - 4 * 4) == 85_806_346
    assert vit.model.patch_embed.num_patches == 64
    with torch.no_grad():
        assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_timm_vit_b16_at_224_instantiates_with_86m_params() -> None:
    assert n_params(models.create("timm:vit_base_patch16_224", weight_init="skip")) == 85_806_346


def test_timm_pretrained_offline_fails_fast_with_instructions(tmp_path, monkeypatch) -> None:
    import time

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(timm_models, "hub_reachable", lambda timeout=3.0: False)  # as on a machine without network
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # and nothing cached
    start = time.monotonic()
    with pytest.raises(rf.RobustfastError, match=r"unreachable .* checkpoint=path") as info:
        models.create("timm:resnet10t", pretrained=True)
    assert time.monotonic() - start < 10  # no minutes of hub retries
    assert "machine with internet" in str(info.value)


def test_hub_offline_flag_is_restored(monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    before = hf_constants.HF_HUB_OFFLINE
    with timm_models._hub_offline():
        assert hf_constants.HF_HUB_OFFLINE is True
    assert hf_constants.HF_HUB_OFFLINE == before
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert timm_models.hub_reachable() is False
