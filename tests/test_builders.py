"""User model builders (``--model package.module:function``) get only the arguments they accept.

The builders below live in this module and are named by import path (``test_builders:net``),
as a user names theirs: a plain ``net(num_classes=10)``, a torchvision-style ``resnet18``
(keyword-only ``weights``/``progress``, the rest through ``**kwargs``), a timm-style
``model(pretrained=False, num_classes=1000, **kwargs)``, and things that are not builders.
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomize
from torch import Tensor, nn

from amc.cli import main
from amc.models import ModelError, create_model
from amc.pruning.channel import ChannelPruner

HERE = __name__  # the import name pytest gave this module: builders are addressed through it
CALLS: list[dict] = []


# ---------------------------------------------------------------------------------------------
# builders, as users write them


def net(num_classes=10):
    """The simplest builder: no width, no input channels."""
    CALLS.append({"num_classes": num_classes})
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def wide_net(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    CALLS.append({"num_classes": num_classes, "width": width, "in_channels": in_channels})
    c = max(1, round(8 * width))
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, num_classes),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet, narrowed (``base=8``) so the test stays fast."""

    def __init__(self, block, layers: list[int], num_classes: int = 1000, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 8, layers[0])
        self.layer2 = self._make_layer(block, 16, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 32, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 64, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(*, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """torchvision >= 0.13's signature: everything but the weights goes through ``**kwargs``."""
    CALLS.append(dict(kwargs))
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


class TimmNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(8, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def model(pretrained=False, num_classes=1000, **kwargs):
    """timm's registered-model signature; unknown keyword arguments reach the model class."""
    CALLS.append({"pretrained": pretrained, "num_classes": num_classes, **kwargs})
    return TimmNet(num_classes=num_classes, **kwargs)


def needs_depth(depth, num_classes=10):
    return net(num_classes)


def returns_a_state_dict(num_classes=10):
    return net(num_classes).state_dict()


# ---------------------------------------------------------------------------------------------
# tests


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


def logits(m: nn.Module, in_channels: int = 3) -> Tensor:
    with torch.no_grad():
        return m(torch.zeros(2, in_channels, 32, 32))


def test_builder_without_width_gets_num_classes_only():
    m = create_model(f"{HERE}:net", num_classes=4)
    assert CALLS == [{"num_classes": 4}]
    assert logits(m).shape == (2, 4) and not m.training


def test_builder_without_width_refuses_another_width():
    with pytest.raises(ModelError, match=r"takes no width argument, so it cannot build width 0\.5") as info:
        create_model(f"{HERE}:net", num_classes=4, width=0.5)
    assert "\n" not in str(info.value)
    assert not CALLS


def test_builder_naming_width_and_in_channels_gets_them():
    m = create_model(f"{HERE}:wide_net", num_classes=3, width=0.5, in_channels=1)
    assert CALLS == [{"num_classes": 3, "width": 0.5, "in_channels": 1}]
    assert logits(m, in_channels=1).shape == (2, 3)


def test_torchvision_style_resnet18():
    m = create_model(f"{HERE}:resnet18", num_classes=7)
    assert CALLS == [{"num_classes": 7}]  # width and in_channels at their defaults are not passed
    assert logits(m).shape == (2, 7)
    # ... and it prunes: the cut copy computes what the pseudo-pruned model does.
    pruner = ChannelPruner(randomize(m), (1, 3, 32, 32))
    assert len(pruner.units) == 12  # 4 stages tied by their additions (the stem with the first) + 8 convs
    kept = pruner.kept_for([0.5] * len(pruner.units))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruner.export(kept)(x), pruner.apply(kept)(x).clone())


def test_timm_style_builder():
    m = create_model(f"{HERE}:model", num_classes=5)
    assert CALLS == [{"pretrained": False, "num_classes": 5}]
    assert logits(m).shape == (2, 5)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("os:getcwd", r"'os:getcwd' returned a str, not a torch\.nn\.Module"),
        (f"{HERE}:returns_a_state_dict", r"returned a OrderedDict, not a torch\.nn\.Module"),
        (f"{HERE}:needs_depth", r"cannot call '.*needs_depth' with num_classes: missing a required argument"),
    ],
    ids=["not-a-builder", "returns-state-dict", "needs-other-arguments"],
)
def test_non_builders_get_a_one_line_error(spec, fragment):
    with pytest.raises(ModelError, match=fragment) as info:
        create_model(spec)
    assert "\n" not in str(info.value)


def test_cli_reports_a_non_builder_in_one_line(capsys):
    assert main(["evaluate", "--model", "os:getcwd", "--checkpoint", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amc: error: 'os:getcwd' returned a str") and "\n" not in err
