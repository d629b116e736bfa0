"""Grouped convolutions (ResNeXt / RegNet blocks) and layers that channel pruning leaves dense.

A grouped conv keeps the same channel positions in every group, so it keeps its number of
groups; the pseudo-pruned network equals the physically cut one, the cost model equals thop
on the cut model, and budgets are met. A layer without a pruning rule stays dense with a
warning naming it (``strict=True`` refuses the model instead) while the rest still prunes.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from amc.envs.wall import ActionWall
from conftest import randomize
from thop import profile
from torch import Tensor, nn

from amc.backends import ChannelBackend
from amc.baselines import solve_uniform
from amc.cli import build_parser, main
from amc.cli.apply import apply_env_config
from amc.cli.search import search_env_config
from amc.policy import Policy
from amc.pruning.channel import ChannelPruner
from amc.pruning.units import UnsupportedModuleError

RTOL = 1e-5
HERE = __name__  # the import name pytest gave this module: the CLI test's builder lives here


def conv_bn(
    cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's SE gate (1x1 convs), or timm/RegNet's with Linear layers (``linear=True``)."""

    def __init__(self, channels: int, squeeze: int, linear: bool = False):
        super().__init__()
        self.linear = linear
        layer = nn.Linear if linear else nn.Conv2d
        self.fc1 = layer(channels, squeeze) if linear else layer(channels, squeeze, 1)
        self.fc2 = layer(squeeze, channels) if linear else layer(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=not self.linear)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * (s[:, :, None, None] if self.linear else s)


class Bottleneck(nn.Module):
    """A ResNeXt bottleneck: 1x1 -> grouped 3x3 -> 1x1, plus a shortcut.

    ``se="mid"`` gates the grouped conv's output (RegNet-Y), ``se="end"`` the block's output
    before the addition (SE-ResNeXt).
    """

    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int, se: str):
        super().__init__()
        self.conv1 = conv_bn(cin, width)
        self.conv2 = conv_bn(width, width, 3, stride, groups=groups)
        self.conv3 = conv_bn(width, cout, act=False)
        self.se_mid = SqueezeExcitation(width, width // 4) if se == "mid" else nn.Identity()
        self.se_end = SqueezeExcitation(cout, cout // 4, linear=True) if se == "end" else nn.Identity()
        identity = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if identity else conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.se_end(self.conv3(self.se_mid(self.conv2(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class TinyResNeXt(nn.Module):
    """Stem, two grouped bottlenecks (one SE gate each), and an MLP head.

    ``head="pool"`` pools globally; ``head="flatten"`` flattens a 4x4-pooled map, so its first
    Linear layer's width depends on the input size.
    """

    def __init__(
        self, groups: int = 8, group_width: int = 4, hw: int = 32, head: str = "pool", classes: int = 10
    ):
        super().__init__()
        w1, w2 = groups * group_width, 2 * groups * group_width
        self.stem = conv_bn(3, 16, 3)
        self.layer1 = Bottleneck(16, w1, 32, groups, 1, se="mid")
        self.layer2 = Bottleneck(32, w2, 48, groups, 2, se="end")
        if head == "pool":
            features: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            n = 48
        else:
            features, n = [nn.AvgPool2d(4), nn.Flatten()], 48 * (hw // 8) ** 2
        self.head = nn.Sequential(*features, nn.Linear(n, 24), nn.ReLU(), nn.Linear(24, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


def tiny_resnext(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(TinyResNeXt(**kwargs), seed)


def thop_count(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    macs, params = profile(copy.deepcopy(model), inputs=(torch.zeros(shape),), verbose=False)
    return int(macs), int(params)


def check_equivalence(pruner: ChannelPruner, kept: list[int], x: Tensor) -> nn.Module:
    """Pseudo-pruned output == physically cut output; cost model == thop on the cut model."""
    with torch.no_grad():
        pseudo = pruner.apply(kept)(x).clone()
    small = pruner.export(kept)
    with torch.no_grad():
        physical = small(x)
    err = ((pseudo - physical).norm() / pseudo.norm()).item()
    assert err <= RTOL, f"pseudo-pruned and cut outputs differ: relative error {err:.2e}"
    assert pruner.cost.cost(kept) == thop_count(small, (1, *x.shape[1:])), "cost model != thop"
    return small


def grouped_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels
    }


# ---------------------------------------------------------------------------------------------
# grouped convolutions


@pytest.mark.parametrize(
    ("groups", "hw", "head"),
    [(8, 32, "pool"), (8, 64, "pool"), (8, 32, "flatten"), (8, 64, "flatten"), (32, 8, "pool")],
)
def test_grouped_net_prunes_exactly(groups, hw, head):
    model = tiny_resnext(groups=groups, group_width=4 if groups == 8 else 2, hw=hw, head=head)
    x = torch.randn(2, 3, hw, hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(x).clone()
    pruner = ChannelPruner(model, (1, 3, hw, hw))
    tied = {u.name: u.tie_size for u in pruner.units if u.tie_size > 1}
    # The grouped conv's input unit (conv1) and its output unit (conv2, with the SE gate in layer1).
    assert tied == {
        n: groups for n in ("layer1.conv1.0", "layer1.conv2.0", "layer2.conv1.0", "layer2.conv2.0")
    }
    assert "layer1.se_mid.fc1" in pruner.unit_names and "layer2.se_end.fc1" in pruner.unit_names
    assert pruner.cost.cost() == thop_count(model, (1, 3, hw, hw))
    rng = random.Random(f"{groups}-{hw}-{head}")
    for _ in range(3):
        kept = pruner.kept_for([rng.uniform(0.0, 0.9) for _ in pruner.units])
        assert all(k % u.tie_size == 0 for u, k in zip(pruner.units, kept, strict=True))
        small = check_equivalence(pruner, kept, x)
        for name, conv in grouped_convs(small).items():
            dense_conv = dict(model.named_modules())[name]
            assert conv.groups == dense_conv.groups == groups
            assert conv.in_channels % groups == 0 and conv.out_channels % groups == 0
            assert conv.weight.shape[1] == conv.in_channels // groups
    with torch.no_grad():
        assert torch.equal(model(x), dense), "export must leave the model dense"


def test_grouped_conv_keeps_the_same_positions_in_every_group():
    model = tiny_resnext()
    pruner = ChannelPruner(model)
    kept = [u.channels for u in pruner.units]
    for name in ("layer1.conv1.0", "layer1.conv2.0"):
        kept[pruner.unit_names.index(name)] = 16  # of 32: two of four channels per group
    removed = pruner.removed_channels(kept)
    conv = model.layer1.conv2[0]
    for name, is_output in (("layer1.conv1.0", False), ("layer1.conv2.0", True)):
        unit = pruner.graph.unit(name)
        item = next(i for i in unit.items if i.module == "layer1.conv2.0" and i.is_output == is_output)
        gone = sorted(i for i, r in zip(item.idxs, item.root, strict=True) if r in removed[unit.index])
        per_group = conv.out_channels // conv.groups
        positions = [{i % per_group for i in gone if i // per_group == g} for g in range(conv.groups)]
        assert len(gone) == 16 and all(p == positions[0] for p in positions) and len(positions[0]) == 2
    check_equivalence(pruner, kept, torch.randn(2, 3, 32, 32))


def test_kept_channels_round_to_whole_ties():
    pruner = ChannelPruner(tiny_resnext(), round_to=3)
    index = pruner.unit_names.index("layer1.conv2.0")
    assert pruner.units[index].tie_size == 8
    assert [pruner.kept_at(index, s) for s in (0.0, 0.3, 0.5, 0.9)] == [32, 24, 24, 24]  # lcm(3, 8) = 24
    kept = [u.channels for u in pruner.units]
    kept[index] = 20
    with pytest.raises(ValueError, match="sets of 8"):
        pruner.removed_channels(kept)


@pytest.mark.parametrize("hw", [32, 64])
def test_grouped_net_meets_budgets(hw):
    model = tiny_resnext(hw=hw, head="flatten")
    shape = (1, 3, hw, hw)
    pruner = ChannelPruner(model, shape)
    backend = ChannelBackend(pruner)

    def ratio(kept: list[int]) -> float:
        return backend.kept_costs(kept)["flops"]

    dense = thop_count(model, shape)[0]
    uniform = pruner.kept_for(solve_uniform(backend, 0.5, "flops"))
    assert 0.4 < ratio(uniform) <= 0.5
    assert thop_count(pruner.export(uniform), shape)[0] / dense == ratio(uniform)
    # An episode of random actions clamped by the action wall ends at or below the budget.
    wall = ActionWall(lambda s: ratio(pruner.kept_for(s)), len(pruner.units), 0.5, 0.8)
    rng = random.Random(hw)
    decided: list[float] = []
    for _ in pruner.units:
        decided.append(wall.clamp(decided, rng.uniform(0.0, 0.8)))
    kept = pruner.kept_for(decided)
    assert ratio(kept) <= 0.5
    assert thop_count(pruner.export(kept), shape)[0] / dense == ratio(kept)


class ConcatGrouped(nn.Module):
    """Two branches concatenated into one grouped conv: its groups span two units."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8, 3), conv_bn(3, 8, 3)
        self.grouped = conv_bn(16, 16, 3, groups=4)
        self.out = conv_bn(16, 8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.out(self.grouped(torch.cat([self.a(x), self.b(x)], 1))))


def test_grouped_conv_spanning_units_is_left_dense(caplog):
    torch.manual_seed(0)
    model = randomize(ConcatGrouped(), 0)
    with pytest.raises(UnsupportedModuleError, match=r"layer 'grouped\.0' \(Conv2d, groups=4\)"):
        ChannelPruner(model, (1, 3, 16, 16), strict=True)
    pruner = ChannelPruner(model, (1, 3, 16, 16))
    assert "layer 'grouped.0'" in caplog.text and "left dense" in caplog.text
    assert pruner.unit_names == ["grouped.0", "out.0"]  # the branches stay dense
    assert pruner.graph.unit("grouped.0").tie_size == 4
    check_equivalence(pruner, pruner.kept_for([0.5, 0.5]), torch.randn(2, 3, 16, 16))


# ---------------------------------------------------------------------------------------------
# layers without a pruning rule


class LayerScale(nn.Module):
    """A learnable per-channel scale (ConvNeXt-style): weights, but no channel-pruning rule."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def test_unprunable_layer_is_left_dense_with_a_warning(caplog):
    model = tiny_resnext()
    model.stem.append(LayerScale(16))
    with pytest.raises(UnsupportedModuleError, match=r"layer 'stem\.3' of type LayerScale"):
        ChannelPruner(model, strict=True)
    pruner = ChannelPruner(model)
    assert "layer 'stem.3' of type LayerScale" in caplog.text and "left dense" in caplog.text
    assert "stem.0" not in pruner.unit_names  # the stem's channels reach the scale
    assert len(pruner.units) == 9 and pruner.graph.unit("layer1.conv2.0").tie_size == 8
    rng = random.Random(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        small = check_equivalence(pruner, pruner.kept_for([rng.uniform(0, 0.8) for _ in pruner.units]), x)
        assert small.stem[3].gamma.shape == (1, 16, 1, 1) and small.stem[0].out_channels == 16


def layerscale_net(num_classes: int = 10) -> nn.Module:
    """A user's builder (``--model test_grouped:layerscale_net``) with an unprunable layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        conv_bn(3, 8, 3, stride=4),
        LayerScale(8),
        conv_bn(8, 16, 3, stride=2, groups=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def test_cli_strict_refuses_and_default_leaves_dense(tmp_path, capsys):
    cases = [(search_env_config, ["search", "--strict"], True), (search_env_config, ["search"], False)]
    cases += [(apply_env_config, ["apply", "--strict"], True)]
    for env_config, argv, strict in cases:
        assert env_config(build_parser().parse_args([*argv, "--target", "flops=0.5"])).strict is strict
    pruner = ChannelPruner(layerscale_net())
    assert pruner.unit_names == ["2.0"]  # the grouped conv's output channels; the stem stays dense
    kept = pruner.kept_for([0.5])
    policy = Policy.from_kept(pruner, kept, [0.5], model="layerscale_net")
    path = policy.save(tmp_path / "policy.json")
    argv = ["apply", "--model", f"{HERE}:layerscale_net", "--checkpoint", "none", "--policy", str(path)]
    argv += ["--no-recalibrate"]
    assert main([*argv, "--strict", "--out", str(tmp_path / "strict")]) == 2
    assert "amc: error: layer '1' of type LayerScale" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "dense")]) == 0
    assert (tmp_path / "dense" / "pruned.pt").is_file()


def test_grouped_net_with_reconstruction():
    """Least-squares refits of the dense consumers keep the cut model equal to the pseudo-pruned one."""
    model = tiny_resnext()
    calibration = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pruner = ChannelPruner(model, calibration=calibration)
    assert "layer1.conv2.0" not in pruner.reconstructor.consumers  # grouped convs are not refit
    kept = pruner.kept_for([0.5] * len(pruner.units))
    check_equivalence(pruner, kept, torch.randn(2, 3, 32, 32))
