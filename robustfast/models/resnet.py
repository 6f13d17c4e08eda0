"""ResNet-18 for 32×32 inputs, as the CIFAR code of TRADES-era papers writes it (GAT, NuAT, FGSM-PGI, MART's
ResNet-18 script, FastAT_Benchmark).

Paper: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016),
https://arxiv.org/abs/1512.03385. The CIFAR form (widespread through ``kuangliu/pytorch-cifar``): a 3×3 stem with 64
channels, BatchNorm and ReLU and no max-pool; four stages of post-activation basic blocks (64/128/256/512 channels,
strides 1/2/2/2; a 1×1 convolution + BatchNorm projection when the shape changes); 4×4 average pooling and a linear
classifier. 11,173,962 parameters for 10 classes and 3 channels. Not the PreAct ResNet-18 of the fast-AT papers
(:mod:`robustfast.models.preact_resnet`).
"""

from __future__ import annotations

from torch import Tensor, nn

from .factory import register_model

__all__ = ["BasicBlock", "ResNet", "resnet18_cifar"]


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """CIFAR ResNet with basic blocks.

    Args:
        blocks: blocks per stage (``(2, 2, 2, 2)`` for ResNet-18).
        num_classes: number of logits.
        in_chans: input channels.
    """

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_planes, planes, 2 if (j == 0 and i > 0) else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("resnet18_cifar", "cifar_resnet18")
def resnet18_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNet:
    """ResNet-18 for 32×32 inputs (``kuangliu/pytorch-cifar`` layout; GAT, NuAT, FGSM-PGI, FastAT_Benchmark).

    Args:
        num_classes: number of logits (default 10).
        in_chans: input channels (default 3).

    Returns:
        11,173,962 parameters for 10 classes and 3 channels.
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans)
