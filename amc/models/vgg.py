"""VGG-16 with BatchNorm for 32x32 inputs (the common CIFAR variant with a single linear head)."""

from __future__ import annotations

from torch import Tensor, nn

from amc.models.resnet import _init_weights

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG-16-BN: thirteen 3x3 conv-BN-ReLU layers, five max-pools, one linear classifier.

    Args:
        num_classes: Classifier outputs.
        width: Multiplier on every convolution's width.
        in_channels: Image channels.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(v) * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of images."""
        return self.classifier(self.features(x).flatten(1))
