"""MobileNet-V1 and MobileNet-V2 adapted to 32x32 inputs.

The CIFAR variants keep the ImageNet layer sequence but start at stride 1 and drop two of
the early downsamplings, so a 32x32 image ends at a 2x2 (V1) or 4x4 (V2) feature map.
"""

from __future__ import annotations

from torch import Tensor, nn

from amc.models.resnet import _init_weights

# (output channels, stride) of the 13 depthwise-separable blocks; the stem runs at stride 1,
# so the network downsamples 32 -> 2 instead of 224 -> 7.
V1_CFG: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# (expansion t, output channels c, repeats n, stride s) of MobileNet-V2, CIFAR strides.
V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor``, never below 90 % of the request."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class MobileNetV1(nn.Module):
    """MobileNet-V1 (Howard et al., 2017): a stem and 13 depthwise-separable blocks.

    Args:
        num_classes: Classifier outputs.
        width: Width multiplier (alpha) on every layer.
        in_channels: Image channels.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        stem = _make_divisible(32 * width)
        layers: list[nn.Module] = [*_conv_bn(in_channels, stem, 3), nn.ReLU(inplace=True)]
        channels = stem
        for out, stride in V1_CFG:
            out = _make_divisible(out * width)
            layers += [*_conv_bn(channels, channels, 3, stride, groups=channels), nn.ReLU(inplace=True)]
            layers += [*_conv_bn(channels, out, 1), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of images."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection, optional skip.

    Args:
        cin: Input channels.
        cout: Output channels.
        stride: Depthwise stride.
        expansion: Hidden width as a multiple of ``cin``.
    """

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNet-V2 (Sandler et al., 2018) for CIFAR.

    Args:
        num_classes: Classifier outputs.
        width: Width multiplier on every layer (the last layer never shrinks below 1280).
        in_channels: Image channels.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        channels = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [*_conv_bn(in_channels, channels, 3), nn.ReLU6(inplace=True)]
        for t, c, n, s in V2_CFG:
            out = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers += [*_conv_bn(channels, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of images."""
        return self.classifier(self.pool(self.features(x)).flatten(1))
