"""Structured channel pruning: units, cost model, pseudo- vs physical pruning, importance, reconstruction.

The central property: for any supported network and any per-unit sparsities, the model
pseudo-pruned in place (:meth:`ChannelPruner.apply`) computes the same function as the
physically smaller copy (:meth:`ChannelPruner.export`), and the closed-form cost model gives
exactly ultralytics-thop's MACs and parameters of that copy. It is checked on the model zoo
and on randomly generated architectures.
"""

from __future__ import annotations

import copy
import functools
import random
import re

import pytest
import torch
from conftest import randomize
from hypothesis import given, settings
from hypothesis import strategies as st
from thop import profile
from torch import Tensor, nn

from amc.models import create_model
from amc.pruning.channel import ChannelPruner, kept_channels
from amc.pruning.importance import channel_importance
from amc.pruning.units import PruningGraph, PruningUnit, UnsupportedModuleError, analyse

RTOL = 1e-5

# (name, width): widths that keep the default run fast; the deep ResNets only under `slow`.
ZOO = [
    ("resnet20", 1.0),
    ("plain20", 1.0),
    ("resnet32", 1.0),
    ("vgg16", 0.5),
    ("mobilenet_v1", 0.5),
    ("mobilenet_v2", 0.5),
]
ZOO_SLOW = [("resnet56", 1.0), ("resnet110", 1.0)]


# ---------------------------------------------------------------------------------------------
# helpers


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()


def thop_count(model: nn.Module, x: Tensor) -> tuple[int, int]:
    macs, params = profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    return int(macs), int(params)


def conv_width(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def random_sparsities(pruner: ChannelPruner, rng: random.Random, high: float = 0.9) -> list[float]:
    return [rng.uniform(0.0, high) for _ in pruner.units]


def check_equivalence(pruner: ChannelPruner, kept: list[int], x: Tensor) -> nn.Module:
    """Pseudo == physical output, and cost model == thop on the physical model; returns it."""
    with torch.no_grad():
        pseudo = pruner.apply(kept)(x).clone()
    small = pruner.export(kept)
    with torch.no_grad():
        physical = small(x)
    assert physical.shape == pseudo.shape
    err = rel_err(pseudo, physical)
    assert err <= RTOL, f"pseudo-pruned and exported outputs differ: relative error {err:.2e}"
    assert pruner.cost.cost(kept) == thop_count(small, x[:1]), "cost model != thop on the exported model"
    return small


WIDTH = {nn.Conv2d: ("in_channels", "out_channels"), nn.Linear: ("in_features", "out_features")}


def check_layer_widths(pruner: ChannelPruner, small: nn.Module, kept: list[int]) -> None:
    """The exported layers show exactly the kept channels.

    A producer whose channels are exactly the unit's keeps ``kept[u]`` of them, and every
    layer loses exactly the input/output features that map to removed unit channels.
    """
    dense, exported = dict(pruner.model.named_modules()), dict(small.named_modules())
    lost: dict[tuple[str, bool], int] = {}
    for unit, k, removed in zip(pruner.units, kept, pruner.removed_channels(kept), strict=True):
        for item in unit.items:
            key = (item.module, item.is_output)
            lost[key] = lost.get(key, 0) + sum(r in removed for r in item.root)
            width = WIDTH.get(type(dense[item.module]), ("", "num_features"))[1]
            if item.is_output and len(set(item.root)) == unit.channels == getattr(dense[item.module], width):
                m = exported[item.module]
                assert getattr(m, width) == k, f"unit {unit.name}: {item.module}.{width} != kept {k}"
    for (name, is_output), count in lost.items():
        m = exported[name]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.num_features == dense[name].num_features - count, name
        elif is_output or getattr(m, "groups", 1) == 1:
            attr = WIDTH[type(m)][is_output]
            assert getattr(m, attr) == getattr(dense[name], attr) - count, f"{name}.{attr}"
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels == m.out_channels == m.groups, name


# ---------------------------------------------------------------------------------------------
# the model zoo


def zoo_case(name: str, width: float, round_to: int, trials: int = 3) -> None:
    torch.manual_seed(0)
    model = randomize(create_model(name, width=width), seed=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model(x).clone()
    pruner = ChannelPruner(model, (1, 3, 32, 32), round_to=round_to)
    full = conv_width(model)
    rng = random.Random(f"{name}-{round_to}")
    for _ in range(trials):
        kept = pruner.kept_for(random_sparsities(pruner, rng))
        small = check_equivalence(pruner, kept, x)
        check_layer_widths(pruner, small, kept)
        if kept != [u.channels for u in pruner.units]:
            assert conv_width(small) < full
        assert conv_width(model) == full  # export works on a copy
        with torch.no_grad():
            assert torch.equal(model(x), dense), "export must leave the model dense"
            pruner.apply(kept)
            pruner.reset()
            assert torch.equal(model(x), dense), "reset() must restore the dense output exactly"


@pytest.mark.parametrize("round_to", [1, 4])
@pytest.mark.parametrize(("name", "width"), ZOO, ids=[n for n, _ in ZOO])
def test_zoo_pseudo_equals_physical_and_cost_equals_thop(name, width, round_to):
    zoo_case(name, width, round_to)


@pytest.mark.slow
@pytest.mark.parametrize("round_to", [1, 4])
@pytest.mark.parametrize(("name", "width"), ZOO_SLOW, ids=[n for n, _ in ZOO_SLOW])
def test_zoo_deep_resnets(name, width, round_to):
    zoo_case(name, width, round_to, trials=2)


@pytest.mark.parametrize(("name", "width"), [("mobilenet_v1", 0.5), ("plain20", 0.5)])
def test_dense_cost_equals_thop(name, width):
    model = create_model(name, width=width)
    pruner = ChannelPruner(model)
    assert pruner.cost.cost() == thop_count(model, torch.zeros(1, 3, 32, 32))
    assert pruner.cost.cost([u.channels for u in pruner.units]) == pruner.cost.cost()


# ---------------------------------------------------------------------------------------------
# random architectures


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = False, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, cout, 3, stride), cbr(cout, cout, 3, act=False))
        identity = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if identity else cbr(cin, cout, 1, stride, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers = [cbr(cin, hidden, 1)] if t != 1 else []
        layers += [cbr(hidden, hidden, 3, stride, groups=hidden), cbr(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class Concat(nn.Module):
    """Inception-like: a 1x1 branch and a 1x1-3x3 branch, concatenated; ``dense`` passes x itself."""

    def __init__(self, cin: int, c1: int, c2: int, dense: bool = False):
        super().__init__()
        self.a = nn.Identity() if dense else cbr(cin, c1, 1)
        self.b = nn.Sequential(cbr(cin, c2, 1), cbr(c2, c2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: list[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


BLOCKS = ("conv", "residual", "separable", "inverted", "concat", "dense", "maxpool", "avgpool")
# On a concatenated tensor these tie both branches into one unit of several segments (a
# depthwise conv or an addition): the "coupled concat" class, tested on its own below.
COUPLING = ("separable", "inverted-dw", "inverted-skip", "residual-identity")


def make_block(kind: str, c: int, cout: int, stride: int, rng: random.Random) -> tuple[nn.Module, str, int]:
    """A block reading ``c`` channels: (module, exact construct, output channels)."""
    if kind == "conv":
        return cbr(c, cout, rng.choice([1, 3]), stride, bias=rng.random() < 0.5), "conv", cout
    if kind == "residual":
        block = Residual(c, cout, stride)
        return block, "residual-identity" if isinstance(block.shortcut, nn.Identity) else "residual", cout
    if kind == "separable":
        return nn.Sequential(cbr(c, c, 3, stride, groups=c), cbr(c, cout, 1)), "separable", cout
    t = rng.choice([1, 2, 3])
    block = InvertedResidual(c, cout, stride, t)
    return block, "inverted-skip" if block.skip else "inverted-dw" if t == 1 else "inverted", cout


def random_architecture(seed: int, hw: int = 16, hazard: str | None = None) -> tuple[nn.Module, list[str]]:
    """A small random CNN (BatchNorm randomised, eval mode) and the constructs it uses.

    ``hazard``: ``None`` builds only supported structures; ``"coupled"`` adds a concatenation
    followed by a depthwise conv or an addition; ``"flatten"`` ends with a concatenation that
    is flattened (no global pooling) into the linear head.
    """
    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        c = rng.randint(4, 16)
        blocks: list[nn.Module] = [cbr(3, c, 3, bias=rng.random() < 0.3)]
        used, concat_open = ["stem"], False
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(BLOCKS)
            if kind.endswith("pool"):
                if hw >= 4:
                    blocks.append(nn.MaxPool2d(2) if kind == "maxpool" else nn.AvgPool2d(2))
                    used.append(kind)
                    hw //= 2
                continue
            if kind in ("concat", "dense"):
                c1, c2 = rng.randint(4, 12), rng.randint(4, 12)
                blocks.append(Concat(c, c1, c2, dense=kind == "dense"))
                used.append(kind)
                c, concat_open = (c if kind == "dense" else c1) + c2, True
                continue
            stride = 2 if hw >= 8 and rng.random() < 0.3 else 1
            cout = c if rng.random() < 0.4 else rng.randint(4, 24)
            block, kind, cout = make_block(kind, c, cout, stride, rng)
            if concat_open and kind in COUPLING:  # keep the concatenated branches separate units
                stride = 1
                block, kind, cout = make_block("conv", c, cout, stride, rng)
            blocks.append(block)
            used.append(kind)
            c, hw, concat_open = cout, (hw + stride - 1) // stride, False
        if hazard is not None and not concat_open:
            c1, c2 = rng.randint(4, 8), rng.randint(4, 8)
            blocks.append(Concat(c, c1, c2))
            used.append("concat")
            c, concat_open = c1 + c2, True
        if hazard == "coupled":
            block, kind, c = make_block(rng.choice(["separable", "residual"]), c, c, 1, rng)
            blocks.append(block)
            used += [kind, "coupled-concat"]
            concat_open = False
        if hazard == "flatten" or (hw <= 4 and not concat_open and rng.random() < 0.5):
            head: list[nn.Module] = [nn.Flatten()]
            features = c * hw * hw
            used.append("flatten-concat" if concat_open else "flatten")
        else:
            head = [rng.choice([nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)]), nn.Flatten()]
            features = c
            used.append("global-pool")
        if rng.random() < 0.5:
            hidden = rng.randint(8, 24)
            head += [nn.Linear(features, hidden), nn.ReLU()]
            features = hidden
            used.append("hidden-linear")
        head.append(nn.Linear(features, rng.randint(2, 10)))
        model = Net(blocks, head)
    return randomize(model, seed), used


def random_case(seed: int, hazard: str | None = None, strict: bool = False) -> None:
    model, used = random_architecture(seed, hazard=hazard)
    rng = random.Random(10_000 + seed)
    pruner = ChannelPruner(model, (1, 3, 16, 16), round_to=rng.choice([1, 4]), strict=strict)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    kept = pruner.kept_for(random_sparsities(pruner, rng))
    try:
        small = check_equivalence(pruner, kept, x)
        check_layer_widths(pruner, small, kept)
    except Exception as exc:
        raise AssertionError(f"architecture seed {seed} ({' -> '.join(used)}), kept {kept}: {exc}") from exc


def test_generator_covers_every_construct():
    used = set()
    for seed in range(30):
        used.update(random_architecture(seed)[1])
    expected = {
        "stem", "conv", "residual", "residual-identity", "separable", "inverted", "inverted-dw",
        "inverted-skip", "concat", "dense", "maxpool", "avgpool", "flatten", "global-pool",
        "hidden-linear",
    }  # fmt: skip
    assert expected <= used, f"constructs never generated: {expected - used}"
    assert "coupled-concat" not in used and "flatten-concat" not in used


@pytest.mark.parametrize("seed", range(30))
def test_random_architecture(seed):
    random_case(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(30, 130))
def test_random_architecture_many(seed):
    random_case(seed)


@pytest.mark.parametrize("seed", range(10))
def test_random_architectures_with_coupled_concat(seed):
    """A concat then a depthwise conv or an addition: one unit of several segments."""
    random_case(seed, hazard="coupled")


def test_random_architectures_with_flattened_concat(caplog):
    """torch-pruning 1.6 merges the branches of a concat flattened into a Linear (no pooling):
    ``analyse`` leaves the units it maps wrongly dense, with a warning, and the rest of the net
    prunes correctly; ``strict=True`` refuses such a net with a clear error."""
    refused = 0
    for seed in range(10):
        random_case(seed, hazard="flatten")
        try:
            random_case(seed, hazard="flatten", strict=True)
        except UnsupportedModuleError as exc:
            assert "channel pruning cannot follow this layout" in str(exc)
            refused += 1
    assert refused
    assert "channel pruning cannot follow this layout" in caplog.text and "left dense" in caplog.text


def concat_depthwise_net() -> nn.Module:
    """Minimal repro: stem(8) -> cat[1x1 -> 4, 1x1 -> 6] -> depthwise 3x3 (10) -> 1x1 -> pool -> fc."""
    torch.manual_seed(0)
    net = Net(
        [cbr(3, 8), Concat(8, 4, 6), cbr(10, 10, 3, groups=10), cbr(10, 8, 1)],
        [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)],
    )
    with torch.no_grad():
        net.blocks[2][0].weight[4:] *= 0.01  # the 6 channels of branch b are the least important
    return randomize(net, 0)


def test_concat_then_depthwise_forms_one_unit_and_prunes_consistently():
    """The unit spans both branches (root indices of the depthwise conv); pseudo == physical."""
    net = concat_depthwise_net()
    pruner = ChannelPruner(net, (1, 3, 16, 16))
    unit = next(u for u in pruner.units if "blocks.2.0" in u.producers)
    assert unit.channels == 10 and unit.kind == "depthwise"
    assert {"blocks.1.a.0", "blocks.1.b.1.0"} <= set(unit.producers)
    assert pruner.importance[unit.index].shape == (10,)
    kept = [u.channels for u in pruner.units]
    assert unit.segments == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    # 5 kept: one per branch, the other 3 in proportion to 3:5 spare channels -> 2 + 3, each
    # branch's most important (by importance alone, branch b would keep 1 channel).
    kept[unit.index] = 5
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        pseudo = pruner.apply(kept)(x).clone()
    small = pruner.export(kept)
    assert small.blocks[1].a[0].out_channels == 2 and small.blocks[1].b[1][0].out_channels == 3
    with torch.no_grad():
        assert rel_err(pseudo, small(x)) <= RTOL


def test_concat_then_depthwise_cost_is_exact():
    net = concat_depthwise_net()
    pruner = ChannelPruner(net, (1, 3, 16, 16))
    kept = [u.channels for u in pruner.units]
    kept[pruner.unit_names.index("blocks.1.a.0")] = 5
    small = pruner.export(kept)
    assert pruner.cost.cost(kept) == thop_count(small, torch.zeros(1, 3, 16, 16))


def test_concat_flattened_into_linear_is_left_dense_or_refused():
    """Minimal repro: stem -> pool to 4x4 -> cat[1x1 -> 4, 1x1-3x3 -> 4] -> flatten -> Linear(128).

    torch-pruning maps both branches to the first 64 inputs of the Linear; the probe sees 128.
    """
    torch.manual_seed(0)
    net = randomize(
        Net([cbr(3, 8), nn.MaxPool2d(4), Concat(8, 4, 4)], [nn.Flatten(), nn.Linear(8 * 16, 3)]), 0
    )
    with pytest.raises(UnsupportedModuleError, match=r"layer 'head\.1' \(Linear\) reads 128 input features"):
        ChannelPruner(net, (1, 3, 16, 16), strict=True)
    # By default the concatenated branches stay dense (a warning names the Linear), the rest prunes.
    pruner = ChannelPruner(net, (1, 3, 16, 16))
    assert pruner.unit_names == ["blocks.0.0", "blocks.2.b.0.0"]
    check_equivalence(pruner, pruner.kept_for([0.5] * len(pruner.units)), torch.randn(2, 3, 16, 16))
    # With global pooling before the head the same concat prunes correctly.
    net = randomize(
        Net(
            [cbr(3, 8), nn.MaxPool2d(4), Concat(8, 4, 4)],
            [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)],
        ),
        0,
    )
    pruner = ChannelPruner(net, (1, 3, 16, 16))
    check_equivalence(pruner, pruner.kept_for([0.5] * len(pruner.units)), torch.randn(2, 3, 16, 16))


# ---------------------------------------------------------------------------------------------
# units


def execution_order(model: nn.Module, shape=(1, 3, 32, 32)) -> list[str]:
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
        for n, m in model.named_modules()
        if next(m.children(), None) is None
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return order


@functools.cache
def zoo_graph(name: str, width: float) -> tuple[nn.Module, PruningGraph]:
    """A zoo model and its analysis, shared by the read-only unit tests."""
    torch.manual_seed(0)
    model = create_model(name, width=width)
    return model, analyse(model, (1, 3, 32, 32))


def unit_containing(units: list[PruningUnit], module: str) -> PruningUnit:
    return next(u for u in units if module in u.producers)


@pytest.mark.parametrize(("name", "width"), ZOO, ids=[n for n, _ in ZOO])
def test_units_structure(name, width):
    model, graph = zoo_graph(name, width)
    order = execution_order(model)
    convs = [n for n in order if isinstance(graph_module(model, n), (nn.Conv2d, nn.Linear))]
    first, classifier = convs[0], convs[-1]
    assert graph.output_layers == [classifier]
    positions = [order.index(u.name) for u in graph.units]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert [u.index for u in graph.units] == list(range(len(graph.units)))
    for u in graph.units:
        assert not any(i.module == first and not i.is_output for i in u.items), "input channels in a unit"
        assert not any(i.module == classifier and i.is_output for i in u.items), "classifier outputs"
        assert u.channels > 0 and u.in_channels > 0
        assert len(u.in_hw) == 2 and min(u.in_hw) >= 1
        assert u.stride >= 1 and u.kernel >= 1
        assert u.flops > 0 and u.params > 0, u
        assert u.kind in ("conv", "depthwise", "residual", "linear")
    # every prunable conv's output channels belong to exactly one unit
    produced = [p for u in graph.units for p in u.producers]
    assert len(produced) == len(set(produced))
    assert set(convs[:-1]) <= set(produced)
    # names are stable across a fresh, differently initialised instance
    torch.manual_seed(123)
    again = analyse(create_model(name, width=width), (1, 3, 32, 32))
    summary = [(u.name, u.kind, u.channels, u.producers, u.consumers) for u in graph.units]
    assert summary == [(u.name, u.kind, u.channels, u.producers, u.consumers) for u in again.units]


def graph_module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def test_resnet20_residual_stages_are_single_units():
    _, graph = zoo_graph("resnet20", 1.0)
    residual = [u for u in graph.units if u.kind == "residual"]
    assert len(residual) == 3
    stages = {
        "conv1": {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"},
        "layer2.0.conv2": {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"},
        "layer3.0.conv2": {"layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2"},
    }
    widths = {"conv1": 16, "layer2.0.conv2": 32, "layer3.0.conv2": 64}
    for u in residual:
        convs = {p for p in u.producers if p.endswith(("conv1", "conv2", "shortcut.0"))}
        assert convs == stages[u.name]
        assert u.channels == widths[u.name]
    # inside each block, conv1's output is its own unit, consumed only by that block's conv2
    for stage in (1, 2, 3):
        for block in range(3):
            u = graph.unit(f"layer{stage}.{block}.conv1")
            assert u.kind == "conv" and u.consumers == [f"layer{stage}.{block}.conv2"]
    # the last stage feeds the classifier
    assert "fc" in graph.unit("layer3.0.conv2").consumers
    with pytest.raises(KeyError, match="no pruning unit"):
        graph.unit("nope")


def test_mobilenet_v2_depthwise_convs_live_in_depthwise_units():
    model, graph = zoo_graph("mobilenet_v2", 0.5)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    for name in depthwise:
        unit = unit_containing(graph.units, name)
        assert unit.kind == "depthwise", (name, unit.name, unit.kind)
        assert unit.channels == graph_module(model, name).out_channels


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    n=st.integers(1, 600),
    s1=st.floats(0.0, 1.0),
    s2=st.floats(0.0, 1.0),
    round_to=st.sampled_from([1, 2, 4, 8, 16, 32]),
)
def test_kept_channels_properties(n, s1, s2, round_to):
    lo, hi = sorted((s1, s2))
    k_lo, k_hi = kept_channels(n, lo, round_to), kept_channels(n, hi, round_to)
    for k in (k_lo, k_hi):
        assert 1 <= k <= n
        if n >= round_to:
            # a multiple of round_to, except when everything is kept (rounding up past n)
            assert k % round_to == 0 or k == n, (n, round_to, k)
        else:
            assert k == n
    assert k_hi <= k_lo  # more sparsity never keeps more


def test_kept_channels_examples_and_errors():
    assert kept_channels(64, 0.0) == 64
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(64, 1.0) == 1  # never zero
    assert kept_channels(64, 0.99, round_to=8) == 8  # at least one step
    assert kept_channels(3, 0.5, round_to=8) == 3  # narrower than a step: keep all
    assert kept_channels(64, 0.3, round_to=8) == 48
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            kept_channels(16, bad)


def test_kept_for_checks_length_and_sparsities_by_name():
    pruner = ChannelPruner(create_model("resnet20", width=0.5))
    with pytest.raises(ValueError, match="one per unit"):
        pruner.kept_for([0.5])
    name = pruner.unit_names[1]
    sp = pruner.sparsities_by_name({name: 0.5})
    assert sp[1] == 0.5 and sum(sp) == 0.5
    with pytest.raises(KeyError, match="unknown unit"):
        pruner.sparsities_by_name({"not.a.layer": 0.5})


class Scaled(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@pytest.mark.parametrize(
    ("layer", "width", "type_name"),
    [(nn.Conv2d(8, 4, 3, padding=1, groups=4), 4, "Conv2d"), (Scaled(8), 8, "Scaled")],
    ids=["one-output-per-group-conv", "custom-parameter"],
)
def test_unsupported_layer_is_named(layer, width, type_name, caplog):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        layer,
        nn.Conv2d(width, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    with pytest.raises(UnsupportedModuleError, match=rf"'2'.*{type_name}") as info:
        analyse(model, (1, 3, 8, 8), strict=True)
    assert isinstance(info.value, TypeError)
    with pytest.raises(UnsupportedModuleError):
        ChannelPruner(model, (1, 3, 8, 8), strict=True)
    # By default the layer stays dense, with a warning naming it; the other unit still prunes.
    pruner = ChannelPruner(model, (1, 3, 8, 8))
    assert re.search(rf"layer '2'.*{type_name}.*left dense", caplog.text)
    assert pruner.unit_names == ["3"]
    check_equivalence(pruner, pruner.kept_for([0.5]), torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# importance


def small_net(seed: int = 0, width: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(
        nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        ),
        seed,
    )


def test_l1_zeroed_filter_is_removed_first():
    for channel in (0, 5, 11):
        net = small_net()
        with torch.no_grad():
            net[0].weight[channel] = 0
        pruner = ChannelPruner(net, (1, 3, 16, 16), criterion="l1")
        assert pruner.units[0].name == "0"
        assert int(pruner.importance[0].argmin()) == channel
        kept = [u.channels for u in pruner.units]
        kept[0] -= 1
        assert pruner.removed_channels(kept)[0] == {channel}
        assert pruner.removed_channels(kept)[1:] == [set()] * (len(kept) - 1)


def test_l1_and_l2_rank_differently():
    net = small_net(width=2)
    with torch.no_grad():
        w = torch.zeros_like(net[0].weight)
        w[0, 0, 1, 1] = 3.0  # one large weight: l1 = 3, l2 = 3
        w[1] = 0.25  # 27 small weights: l1 = 6.75, l2 = 1.3
        net[0].weight.copy_(w)
    kept = lambda p: [1] + [u.channels for u in p.units[1:]]  # noqa: E731
    l1 = ChannelPruner(net, (1, 3, 8, 8), criterion="l1")
    l2 = ChannelPruner(net, (1, 3, 8, 8), criterion="l2")
    assert l1.removed_channels(kept(l1))[0] == {0}
    assert l2.removed_channels(kept(l2))[0] == {1}
    assert not torch.equal(l1.importance[0], l2.importance[0])


def test_unknown_criterion_is_rejected():
    net = small_net()
    with pytest.raises(ValueError, match="unknown importance criterion 'l3'"):
        ChannelPruner(net, (1, 3, 8, 8), criterion="l3")
    unit = analyse(net, (1, 3, 8, 8)).units[0]
    with pytest.raises(ValueError, match="l1, l2"):
        channel_importance(net, unit, "fpgm")


# ---------------------------------------------------------------------------------------------
# reconstruction


def consumer_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    out: list[Tensor] = []
    handle = graph_module(model, layer).register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    with torch.no_grad():
        final = model(x)
    handle.remove()
    return out[0], final


def test_reconstruction_lowers_consumer_error():
    net = small_net(seed=3, width=16)
    gen = torch.Generator().manual_seed(0)
    calibration = torch.randn(64, 3, 16, 16, generator=gen)
    dense_mid, dense_final = consumer_output(net, "3", calibration)
    plain = ChannelPruner(copy.deepcopy(net), (1, 3, 16, 16))
    refit = ChannelPruner(copy.deepcopy(net), (1, 3, 16, 16), calibration=calibration, positions=32)
    assert refit.reconstructor is not None and plain.reconstructor is None
    assert "3" in refit.reconstructor.consumers
    errors = {}
    for label, pruner in (("plain", plain), ("refit", refit)):
        kept = [u.channels for u in pruner.units]
        kept[0] = 6  # prune 10 of the 16 channels feeding consumer "3"
        mid, final = consumer_output(pruner.apply(kept), "3", calibration)
        errors[label] = (rel_err(dense_mid, mid), rel_err(dense_final, final))
    assert errors["refit"][0] < 0.8 * errors["plain"][0], errors
    assert errors["refit"][1] < errors["plain"][1], errors
    # only the consumer of the pruned unit is refit; reset restores it
    refit.reset()
    assert torch.equal(consumer_output(refit.model, "3", calibration)[1], dense_final)


def test_reconstruction_keeps_pseudo_equal_to_physical():
    for seed in range(3):
        net = small_net(seed=seed, width=16)
        calibration = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        for round_to in (1, 4):
            pruner = ChannelPruner(net, (1, 3, 16, 16), round_to=round_to, calibration=calibration)
            kept = pruner.kept_for(random_sparsities(pruner, random.Random(seed)))
            check_equivalence(pruner, kept, calibration[:4])


def test_reconstruction_on_zoo_model_keeps_equivalence():
    model = randomize(create_model("mobilenet_v2", width=0.5), 0)
    calibration = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pruner = ChannelPruner(model, round_to=4, calibration=calibration, positions=4)
    kept = pruner.kept_for(random_sparsities(pruner, random.Random(0), high=0.6))
    small = check_equivalence(pruner, kept, calibration[:2])
    check_layer_widths(pruner, small, kept)


def test_random_architectures_with_reconstruction():
    for seed in range(5):
        model, _ = random_architecture(seed)
        calibration = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        pruner = ChannelPruner(model, (1, 3, 16, 16), calibration=calibration)
        kept = pruner.kept_for(random_sparsities(pruner, random.Random(seed)))
        check_equivalence(pruner, kept, calibration[:3])
