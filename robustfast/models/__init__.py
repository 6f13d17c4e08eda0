"""Models: PreAct ResNet-18, WideResNets, a small CNN and timm models through one factory, plus ``Normalize``.

PreAct ResNet-18 comes in the three forms of the papers' official code (``variant="zerograd"``, the default,
``"wong"`` and ``"gradalign"``; also registered as ``preact_resnet18_<variant>``): see
:mod:`robustfast.models.preact_resnet`.

Example:
    >>> from robustfast import models
    >>> net = models.create("preact_resnet18", num_classes=10, normalize="cifar10")
    >>> models.create("preact_resnet18_gradalign").variant
    'gradalign'
    >>> models.list_models("wrn*")
    ['wrn_16_4', 'wrn_16_8', 'wrn_28_10', 'wrn_28_4', 'wrn_34_10', 'wrn_34_20', 'wrn_70_16']
"""

from .factory import MODELS, create, list_models, load_weights, register_model
from .normalize import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE_STATS,
    Normalize,
    resolve_normalize,
)
from .preact_resnet import (
    PREACT_ALIASES,
    PREACT_VARIANTS,
    PreActBlock,
    PreActResNet,
    PreActVariant,
    preact_resnet18,
    preact_resnet18_gradalign,
    preact_resnet18_wong,
    preact_resnet18_zerograd,
)
from .resnet import BasicBlock, ResNet, resnet18_cifar
from .small_cnn import SmallCNN, small_cnn
from .wide_resnet import (
    WideBasicBlock,
    WideResNet,
    wrn_16_4,
    wrn_16_8,
    wrn_28_4,
    wrn_28_10,
    wrn_34_10,
    wrn_34_20,
    wrn_70_16,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "NORMALIZE_STATS",
    "PREACT_ALIASES",
    "PREACT_VARIANTS",
    "BasicBlock",
    "Normalize",
    "PreActBlock",
    "PreActResNet",
    "PreActVariant",
    "ResNet",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "create",
    "list_models",
    "load_weights",
    "preact_resnet18",
    "preact_resnet18_gradalign",
    "preact_resnet18_wong",
    "preact_resnet18_zerograd",
    "register_model",
    "resnet18_cifar",
    "resolve_normalize",
    "small_cnn",
    "wrn_16_4",
    "wrn_16_8",
    "wrn_28_4",
    "wrn_28_10",
    "wrn_34_10",
    "wrn_34_20",
    "wrn_70_16",
]
