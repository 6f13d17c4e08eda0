"""PreAct ResNet-18 for 32×32 inputs, in the three forms found in the fast-adversarial-training code.

Paper: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks" (ECCV 2016),
https://arxiv.org/abs/1603.05027. Every CIFAR version shares the layout: a 3×3 stem with 64 channels and no
max-pool, four stages of pre-activation basic blocks (64/128/256/512 channels, strides 1/2/2/2), global average
pooling and a linear classifier. The official code of the papers differs in three details, read from each
repository and written here from that description:

| variant | official code | projection shortcut sees | final BN + ReLU | initialization |
|---|---|---|---|---|
| `zerograd` (default) | ZeroGrad/MultiGrad (rohban-lab/catastrophic_overfitting), SEAT (devicerxx/SEAT) \
| the activated input `relu(bn1(x))` | yes | PyTorch default |
| `wong` | FGSM-RS (locuslab/fast_adversarial), N-FGSM (pdejorge/N-FGSM), AdvLC (TreeLLi/Combating-RO-AdvLC) \
| the raw block input `x` | yes | PyTorch default |
| `gradalign` | GradAlign (tml-epfl/understanding-fast-adv-training), also its FGSM-RS and PGD-10 baselines \
| the raw block input `x` | no: the last block's sum is pooled | He: conv fan-out, linear fan-in |

Parameter counts for 10 classes and 3 channels: 11,172,170 (``zerograd``, ``wong``) and 11,171,146
(``gradalign``: no final BatchNorm). The state-dict keys are the same for all three, minus ``bn.*`` for
``gradalign``, so ``zerograd`` and ``wong`` checkpoints load into each other (but compute different functions).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

from einops.layers.torch import Reduce
from torch import Tensor, nn

from ..errors import RobustfastError
from .factory import register_model

__all__ = [
    "PREACT_ALIASES",
    "PREACT_VARIANTS",
    "PreActBlock",
    "PreActResNet",
    "PreActVariant",
    "preact_resnet18",
    "preact_resnet18_gradalign",
    "preact_resnet18_wong",
    "preact_resnet18_zerograd",
]

ShortcutFrom = Literal["activated", "raw"]
InitScheme = Literal["default", "he_fan_out"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3`` plus a shortcut.

    The shortcut is the identity, or a bias-free 1×1 convolution when the stride or width changes. That
    projection sees either the *activated* input ``relu(bn1(x))`` (default; ZeroGrad's and SEAT's code, the
    WideResNets) or the *raw* input ``x`` (Wong et al.'s, N-FGSM's, AdvLC's and GradAlign's code). Shared by
    PreAct ResNet and WideResNet.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the projection shortcut (default 1).
        dropout: dropout probability between the two convolutions (default 0: none, as PreAct ResNet-18).
        shortcut_from: ``"activated"`` (default) or ``"raw"``: what the projection shortcut receives. The
            identity shortcut always adds the raw input.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        dropout: float = 0.0,
        shortcut_from: ShortcutFrom = "activated",
    ) -> None:
        super().__init__()
        if shortcut_from not in ("activated", "raw"):
            raise RobustfastError(f"PreActBlock shortcut_from must be 'activated' or 'raw', got {shortcut_from!r}")
        self.shortcut_from = shortcut_from
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x).relu()
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(out if self.shortcut_from == "activated" else x)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.bn2(out).relu()))
        return out + skip


@dataclass(frozen=True)
class PreActVariant:
    """One PreAct ResNet form of the reference code (see the module docstring's table).

    Attributes:
        shortcut_from: what the projection shortcuts receive: ``"activated"`` or ``"raw"``.
        final_bn: BatchNorm + ReLU after the last stage, before pooling.
        init: ``"default"`` (PyTorch's layer defaults) or ``"he_fan_out"`` (GradAlign's ``initialize_weights``).
        code: the official code this form follows.
    """

    shortcut_from: ShortcutFrom
    final_bn: bool
    init: InitScheme
    code: str


#: The PreAct ResNet forms of the reference code, by name.
PREACT_VARIANTS: dict[str, PreActVariant] = {
    "zerograd": PreActVariant(
        "activated", True, "default", "rohban-lab/catastrophic_overfitting (ZeroGrad, MultiGrad), devicerxx/SEAT"
    ),
    "wong": PreActVariant(
        "raw", True, "default", "locuslab/fast_adversarial (FGSM-RS), pdejorge/N-FGSM, TreeLLi/Combating-RO-AdvLC"
    ),
    "gradalign": PreActVariant("raw", False, "he_fan_out", "tml-epfl/understanding-fast-adv-training (GradAlign)"),
}
#: Paper names accepted as ``variant=`` aliases.
PREACT_ALIASES: dict[str, str] = {"multigrad": "zerograd", "seat": "zerograd", "nfgsm": "wong", "advlc": "wong"}


def _resolve_variant(variant: str) -> str:
    if not isinstance(variant, str):
        raise RobustfastError(f"PreAct ResNet variant must be a str, got {type(variant).__name__}")
    key = variant.lower().replace("-", "").replace("_", "")  # "N-FGSM", "n_fgsm" -> "nfgsm"
    key = PREACT_ALIASES.get(key, key)
    if key not in PREACT_VARIANTS:
        names = [*PREACT_VARIANTS, *PREACT_ALIASES]
        close = difflib.get_close_matches(str(variant), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RobustfastError(
            f"Unknown PreAct ResNet variant {variant!r}.{hint} Available: {', '.join(PREACT_VARIANTS)} "
            f"(aliases: {', '.join(f'{a}={v}' for a, v in PREACT_ALIASES.items())})"
        )
    return key


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images (CIFAR/SVHN layout).

    Stem: 3×3 convolution with 64 channels, stride 1. Four stages of :class:`PreActBlock` with 64, 128, 256 and
    512 channels (strides 1, 2, 2, 2), then (if ``final_bn``) BatchNorm + ReLU, global average pooling and a
    linear classifier. At 32×32 the last feature map is 4×4, so global pooling equals the reference
    ``avg_pool2d(out, 4)``; other sizes also work. The defaults give the ``zerograd`` form of the module
    docstring; :data:`PREACT_VARIANTS` lists the settings of each paper's code.

    Args:
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: number of logits (default 10).
        in_chans: input channels (default 3).
        shortcut_from: what the projection shortcuts receive: ``"activated"`` (default) or ``"raw"``.
        final_bn: BatchNorm + ReLU after the last stage (default ``True``). Without it (GradAlign's code) the
            pooled features are those of the last block's residual sum, which can be negative; ``self.bn`` is
            then ``None``.
        init: ``"default"`` (PyTorch's layer defaults, as Wong's, N-FGSM's, AdvLC's, ZeroGrad's and SEAT's code)
            or ``"he_fan_out"`` (GradAlign's ``utils.initialize_weights``: convolutions ``N(0, 2 / (k² · out))``,
            the classifier ``N(0, 2 / in)``, all biases 0, BatchNorm weight 1 and bias 0).
        variant: a name recorded on the model (``self.variant``) and shown in its repr (default ``None``:
            ``"custom"``). Use :func:`preact_resnet18` to build a named variant.

    Raises:
        RobustfastError: unknown ``shortcut_from`` or ``init``.
    """

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        shortcut_from: ShortcutFrom = "activated",
        final_bn: bool = True,
        init: InitScheme = "default",
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if init not in ("default", "he_fan_out"):
            raise RobustfastError(f"PreActResNet init must be 'default' or 'he_fan_out', got {init!r}")
        self.num_classes = num_classes
        self.shortcut_from, self.final_bn, self.init = shortcut_from, bool(final_bn), init
        self.variant = variant or "custom"
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 64
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s, shortcut_from=shortcut_from))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(512) if final_bn else None
        self.pool = Reduce("b c h w -> b c", "mean")
        self.linear = nn.Linear(512, num_classes)
        if init == "he_fan_out":
            self._init_he_fan_out()

    def _init_he_fan_out(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled 512-d features (before the classifier)."""
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn is not None:
            out = self.bn(out).relu()
        return self.pool(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.forward_features(x))

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, shortcut_from={self.shortcut_from!r}, final_bn={self.final_bn}, "
            f"init={self.init!r}"
        )


@register_model("preact_resnet18", "preactresnet18", "prn18")
def preact_resnet18(num_classes: int = 10, in_chans: int = 3, variant: str = "zerograd") -> PreActResNet:
    """PreAct ResNet-18 (blocks ``2-2-2-2``) in the form of one paper's official code.

    Args:
        num_classes: number of logits (default 10).
        in_chans: input channels (default 3).
        variant: ``"zerograd"`` (default: projection shortcut on the activated input, final BN + ReLU, PyTorch
            init; ZeroGrad/MultiGrad's and SEAT's code), ``"wong"`` (shortcut on the raw input, final BN + ReLU,
            PyTorch init; Wong et al.'s, N-FGSM's and AdvLC's code) or ``"gradalign"`` (shortcut on the raw input,
            no final BN + ReLU, He fan-out init; GradAlign's code). Paper names are accepted as aliases:
            ``"seat"``/``"multigrad"`` → ``"zerograd"``, ``"nfgsm"``/``"advlc"`` → ``"wong"``.

    Returns:
        11,172,170 parameters for 10 classes and 3 channels (``"gradalign"``: 11,171,146).

    Raises:
        RobustfastError: unknown ``variant``.
    """
    name = _resolve_variant(variant)
    spec = PREACT_VARIANTS[name]
    return PreActResNet(
        (2, 2, 2, 2),
        num_classes=num_classes,
        in_chans=in_chans,
        shortcut_from=spec.shortcut_from,
        final_bn=spec.final_bn,
        init=spec.init,
        variant=name,
    )


@register_model("preact_resnet18_zerograd", "preact_resnet18_multigrad", "preact_resnet18_seat")
def preact_resnet18_zerograd(num_classes: int = 10, in_chans: int = 3) -> PreActResNet:
    """PreAct ResNet-18 of ZeroGrad/MultiGrad's (``rohban-lab/catastrophic_overfitting``) and SEAT's
    (``devicerxx/SEAT``) code: projection shortcut on the activated input, final BN + ReLU, PyTorch init.

    The same network as ``preact_resnet18()``. SEAT's code puts the CIFAR normalization inside the model and
    ZeroGrad's applies it before the model: pass ``normalize="cifar10"`` to :func:`~robustfast.models.create`.
    """
    return preact_resnet18(num_classes, in_chans, variant="zerograd")


@register_model("preact_resnet18_wong", "preact_resnet18_nfgsm", "preact_resnet18_advlc")
def preact_resnet18_wong(num_classes: int = 10, in_chans: int = 3) -> PreActResNet:
    """PreAct ResNet-18 of Wong et al.'s (``locuslab/fast_adversarial``), N-FGSM's (``pdejorge/N-FGSM``) and
    AdvLC's (``TreeLLi/Combating-RO-AdvLC``) code: projection shortcut on the raw block input, final BN + ReLU,
    PyTorch init.

    Differs from ``preact_resnet18()`` only in what the three projection shortcuts receive; same parameters and
    state-dict keys.
    """
    return preact_resnet18(num_classes, in_chans, variant="wong")


@register_model("preact_resnet18_gradalign")
def preact_resnet18_gradalign(num_classes: int = 10, in_chans: int = 3) -> PreActResNet:
    """PreAct ResNet-18 of GradAlign's code (``tml-epfl/understanding-fast-adv-training``, ``models.py`` and
    ``utils.initialize_weights``), also behind its FGSM-RS and PGD-10 baselines.

    Differs from ``preact_resnet18()`` in three ways: the projection shortcuts take the raw block input, there is
    no final BatchNorm + ReLU (the last block's sum is pooled directly; no ``bn.*`` keys, 1,024 parameters fewer)
    and the weights use He initialization: convolutions ``N(0, 2 / (k² · out_channels))`` (fan-out), the
    classifier ``N(0, 2 / in_features)`` (fan-in), all biases 0.
    """
    return preact_resnet18(num_classes, in_chans, variant="gradalign")
