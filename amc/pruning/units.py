"""Pruning units: the channel groups of a network, found with torch-pruning's dependency graph.

A *unit* is a set of channels that must be pruned together: the output channels of a
convolution with its BatchNorm, every layer tied to it by residual additions, the depthwise
convolutions that carry the channels along, and the input channels of every consumer
(including a linear head after flattening, or the slice of a concatenation). Units are
listed in forward-execution order; the network's input channels and the classifier's
outputs are never part of one.

A grouped convolution is pruned as torch-pruning's own pruners do it: the same positions
in every group. Its channels at one position of every group are *tied* (kept or removed
together, see :attr:`PruningUnit.ties`), so every group keeps as many channels, at the same
places, and the convolution keeps its number of groups.

A layer that channel pruning cannot follow (a parameterised module of another type, a
grouped convolution whose groups a unit cannot keep aligned, a layout the dependency graph
maps wrongly) is left dense: :func:`analyse` drops every unit that touches it and logs a
warning that names it; with ``strict=True`` it raises :class:`UnsupportedModuleError`
instead.

Besides the units, :func:`analyse` runs a *zero-propagation probe* once: on a randomised
copy of the network it silences each unit in turn and records, for every leaf module, how
many of its input and output channels went silent. That attribution turns FLOPs and
parameter counts into closed-form functions of each unit's kept channels (see
:mod:`amc.pruning.cost`), exact even across concatenations and flattening.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from amc.cost.flops import layer_costs

log = logging.getLogger(__name__)

SUPPORTED_PARAM_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class UnsupportedModuleError(TypeError):
    """A module on a channel path that we cannot prune; the message names it and its type."""


@dataclass
class UnitItem:
    """One layer's share of a unit: which of its channels (``idxs``) map to unit channels (``root``)."""

    module: str
    is_output: bool
    idxs: list[int]
    root: list[int]


@dataclass
class PruningUnit:
    """A group of coupled channels, pruned as one, with the features of its state embedding.

    Attributes:
        index: Position in execution order.
        name: Stable name: the qualified name of its first layer in execution order.
        channels: Number of channels (n).
        kind: ``conv``, ``depthwise`` (carries depthwise convs), ``residual`` (several
            producers tied by additions) or ``linear``.
        in_channels: Input channels of the first layer (c).
        in_hw: Input feature-map height and width of the first layer.
        stride: Stride of the first layer.
        kernel: Kernel size of the first layer.
        flops: MACs that scale with this unit's width (the network at full width).
        params: Parameters that scale with this unit's width.
        producers: Layers whose output channels the unit removes.
        consumers: Layers whose input channels the unit removes.
        items: The channel index maps of every layer in the unit.
        segments: The unit's channels (root indices) split where its layers split them: one
            segment, unless a concatenation joins several branches into the unit (e.g. a
            depthwise conv or an addition after it). Each segment keeps its share of the
            kept channels (see :func:`split_kept`), so no branch is ever emptied.
        ties: Root indices kept or removed together, all of one size: the same position in
            every group of a grouped convolution. Empty when every channel is free.
        param_owners: Layers outside ``items`` whose parameters torch-pruning ties to the
            unit's channels (parameters of modules it has no pruning rule for).
    """

    index: int
    name: str
    channels: int
    kind: str
    in_channels: int
    in_hw: tuple[int, int]
    stride: int
    kernel: int
    flops: int = 0
    params: int = 0
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    items: list[UnitItem] = field(default_factory=list)
    segments: list[list[int]] = field(default_factory=list)
    ties: list[list[int]] = field(default_factory=list)
    param_owners: list[str] = field(default_factory=list)

    @property
    def tie_size(self) -> int:
        """Channels kept or removed together; kept counts are multiples of it."""
        return len(self.ties[0]) if self.ties else 1

    def tie_classes(self, segment: list[int]) -> list[list[int]]:
        """The tied channel sets within ``segment`` (single channels when nothing is tied)."""
        if not self.ties:
            return [[r] for r in segment]
        members = set(segment)
        return [t for t in self.ties if t[0] in members]


def split_kept(kept: int, sizes: list[int]) -> list[int]:
    """Kept channels per segment: one each, the rest in proportion to the segments' sizes.

    The remainder goes by largest fraction (ties: the earlier segment). A single segment keeps
    ``kept``; several keep ``max(kept, len(sizes))`` in all, so no branch is ever emptied.
    """
    if len(sizes) == 1:
        return [min(kept, sizes[0])]
    extra = max(kept, len(sizes)) - len(sizes)
    spare = [s - 1 for s in sizes]
    exact = [extra * c / sum(spare) for c in spare] if sum(spare) else [0.0] * len(sizes)
    out = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: (out[i] - exact[i], i))[: extra - sum(out)]:
        out[i] += 1
    return [1 + o for o in out]


def _segments(items: list[UnitItem], channels: int) -> list[list[int]]:
    """The coarsest partition of the unit's root indices that every layer's share respects."""
    parts = [set(range(channels))]
    for share in {frozenset(i.root) for i in items}:
        parts = [q for p in parts for q in (p & share, p - share) if q]
    return sorted((sorted(p) for p in parts), key=lambda p: p[0])


@dataclass
class ModuleInfo:
    """A leaf module's cost at full width and which unit segments its channels belong to.

    ``in_attr``/``out_attr`` map a segment (its position in :meth:`PruningGraph.segments`)
    to the number of this module's input/output features in it (channels times the spatial
    size after flattening).
    """

    name: str
    type: str
    macs: int
    params: dict[str, int]
    mixing: bool
    c_in: int
    c_out: int
    in_attr: dict[int, int] = field(default_factory=dict)
    out_attr: dict[int, int] = field(default_factory=dict)
    in_hw: tuple[int, int] = (1, 1)


@dataclass
class PruningGraph:
    """The result of :func:`analyse`: units in execution order and per-module cost data."""

    units: list[PruningUnit]
    modules: dict[str, ModuleInfo]
    input_shape: tuple[int, ...]
    output_layers: list[str]

    def segments(self) -> list[tuple[int, list[int]]]:
        """Every unit's segments in unit order, as ``(unit index, root indices)``."""
        return numbered_segments(self.units)

    def unit(self, name: str) -> PruningUnit:
        """Look a unit up by name; the error lists the valid names."""
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(f"no pruning unit '{name}'; units: {', '.join(u.name for u in self.units)}")


def _is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one input and one output channel per group (torch-pruning couples them)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its input and output channels are pruned apart."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module)


def _is_mixing(module: nn.Module) -> bool:
    """Whether the layer's MACs and weights scale with both its kept inputs and kept outputs."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and not _is_depthwise(module)


def _width(module: nn.Module, is_output: bool) -> int:
    """The layer's number of output (or input) channels."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels if is_output else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if is_output else module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return module.weight.shape[0]


def unsupported_layers(model: nn.Module) -> dict[str, str]:
    """Layers with weights that channel pruning cannot follow: qualified name -> why, naming it."""
    out = {}
    for name, m in model.named_modules():
        if not list(m.parameters(recurse=False)):
            continue
        if not isinstance(m, SUPPORTED_PARAM_TYPES):
            out[name] = (
                f"layer '{name}' of type {type(m).__name__} has weights but no "
                "channel-pruning rule; supported: Conv2d, Linear, BatchNorm"
            )
        elif _is_grouped(m) and m.groups == m.out_channels:
            out[name] = (
                f"layer '{name}' ({type(m).__name__}, groups={m.groups}) is a grouped convolution "
                f"with one output channel per group but {m.in_channels // m.groups} inputs; only "
                "dense, depthwise and grouped convs with several outputs per group are supported"
            )
    return out


def _leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if next(m.children(), None) is None}


def _trace(model: nn.Module, x: Tensor) -> dict[str, tuple[tuple, tuple]]:
    """One forward pass: leaf modules in execution order with their input and output shapes."""
    shapes: dict[str, tuple[tuple, tuple]] = {}

    def hook(name: str):
        def record(mod: nn.Module, inp: tuple, out: Tensor) -> None:
            if name not in shapes and isinstance(out, Tensor) and inp and isinstance(inp[0], Tensor):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in _leaf_modules(model).items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _group_items(group, graph: tp.DependencyGraph, names: dict[nn.Module, str]) -> list[UnitItem]:
    items = []
    for it in group:
        mod = it.dep.target.module
        if isinstance(mod, nn.Module) and mod in names and list(mod.parameters(recurse=False)):
            is_out = graph.is_out_channel_pruning_fn(it.dep.handler)
            items.append(
                UnitItem(names[mod], is_out, [int(i) for i in it.idxs], [int(i) for i in it.root_idxs])
            )
    return items


def _param_owners(group, owners: dict[nn.Parameter, str]) -> list[str]:
    """Layers owning the bare parameters (torch-pruning's "unwrapped" ones) in ``group``."""
    found = {owners[m] for it in group if isinstance(m := it.dep.target.module, nn.Parameter) and m in owners}
    return sorted(found)


def _make_unit(items: list[UnitItem], modules: dict[str, nn.Module], order: list[str], shapes: dict):
    producers = sorted({i.module for i in items if i.is_output and i.module in shapes}, key=order.index)
    layers = [p for p in producers if isinstance(modules[p], (nn.Conv2d, nn.Linear))]
    if not layers:
        return None
    first = modules[layers[0]]
    dense = [p for p in layers if _is_mixing(modules[p])]
    if any(_is_depthwise(modules[p]) for p in layers):
        kind = "depthwise"
    elif len(dense) > 1:
        kind = "residual"
    else:
        kind = "linear" if isinstance(first, nn.Linear) else "conv"
    in_shape = shapes[layers[0]][0]
    conv = isinstance(first, nn.Conv2d)
    channels = len({r for i in items for r in i.root})
    return PruningUnit(
        index=-1,
        name=layers[0],
        channels=channels,
        kind=kind,
        in_channels=in_shape[1],
        in_hw=(in_shape[2], in_shape[3]) if len(in_shape) == 4 else (1, 1),
        stride=first.stride[0] if conv else 1,
        kernel=first.kernel_size[0] if conv else 1,
        producers=producers,
        consumers=sorted(
            {i.module for i in items if not i.is_output}, key=lambda n: order.index(n) if n in order else 0
        ),
        items=items,
        segments=_segments(items, channels),
    )


def find_units(model: nn.Module, x: Tensor, shapes: dict) -> list[PruningUnit]:
    """Channel groups of ``model`` in execution order (classifier outputs excluded)."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    owners = {p: n for n, m in modules.items() for p in m.parameters(recurse=False)}
    order = list(shapes)
    heads = [n for n in reversed(order) if isinstance(modules[n], (nn.Conv2d, nn.Linear))][:1]
    with torch.enable_grad():  # torch-pruning traces through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    groups = graph.get_all_groups(
        ignored_layers=[modules[h] for h in heads], root_module_types=(nn.Conv2d, nn.Linear)
    )
    units = []
    for g in groups:
        unit = _make_unit(_group_items(g, graph, names), modules, order, shapes)
        if unit is not None:
            unit.param_owners = _param_owners(g, owners)
            units.append(unit)
    units.sort(key=lambda u: order.index(u.name))
    _renumber(units)
    return units


def _renumber(units: list[PruningUnit]) -> None:
    for i, u in enumerate(units):
        u.index = i


def _tie_classes(unit: PruningUnit, modules: dict[str, nn.Module]) -> list[list[int]]:
    """The unit's tied channels: root indices at the same position of every group of a grouped conv.

    Raises:
        UnsupportedModuleError: A grouped conv whose groups the unit cannot keep aligned: its
            channels on that side are spread over several units, or the ties would not all
            be of one size (e.g. the unit also carries channels the conv does not see).
    """
    parent = {r: r for r in range(unit.channels)}

    def find(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    grouped = [i for i in unit.items if _is_grouped(modules[i.module])]
    for item in grouped:
        m = modules[item.module]
        width = _width(m, item.is_output)
        if sorted(item.idxs) != list(range(width)):
            side = "output" if item.is_output else "input"
            raise _grouped_error(
                item.module, m, f"its {side} channels are split between unit '{unit.name}' and others"
            )
        first: dict[int, int] = {}
        for idx, root in zip(item.idxs, item.root, strict=True):
            other = first.setdefault(idx % (width // m.groups), root)
            parent[find(root)] = find(other)
    classes: dict[int, list[int]] = {}
    for r in range(unit.channels):
        classes.setdefault(find(r), []).append(r)
    ties = sorted(classes.values())
    if len(ties) == unit.channels:
        return []
    if len({len(t) for t in ties}) > 1 or len(unit.segments) > 1:
        name = grouped[0].module
        raise _grouped_error(name, modules[name], f"unit '{unit.name}' also carries channels it does not see")
    return ties


def _grouped_error(name: str, m: nn.Module, detail: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(
        f"layer '{name}' ({type(m).__name__}, groups={m.groups}) is a grouped convolution whose "
        f"groups cannot keep the same channels ({detail}); grouped convs are pruned when each "
        "side's channels belong to one unit of their own"
    )


def zero_channels(model: nn.Module, unit: PruningUnit, removed: set[int]) -> None:
    """Silence unit channels (root indices ``removed``): zero their rows in every producer.

    A producer's weight rows, bias and BatchNorm affine parameters become zero, so each
    removed channel carries exactly zero wherever it flows, as if it were not there.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for item in unit.items:
            if not item.is_output:
                continue
            rows = [i for i, r in zip(item.idxs, item.root, strict=True) if r in removed]
            if not rows:
                continue
            m = modules[item.module]
            for p in (m.weight, getattr(m, "bias", None)):
                if p is not None:
                    p[rows] = 0


def _channel_activity(t: Tensor) -> Tensor:
    """Which channels (dim 1) of ``t`` carry any nonzero value."""
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1).abs().amax(1) > 0


def _positivise(model: nn.Module, seed: int = 0) -> None:
    """Strictly positive weights (scaled by 1/fan-in), biases of +1 (added where missing), unit BatchNorms.

    Other layers' own parameters become positive too.

    With positive inputs every activation is then positive, so a channel is exactly zero only
    when it belongs to the silenced unit: no ReLU can silence a channel by chance.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_((0.5 + torch.rand(m.weight.shape, generator=gen)) / fan_in)
                m.bias = nn.Parameter(torch.ones(m.weight.shape[0], device=m.weight.device))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.fill_(1.0)
            else:  # a layer without a pruning rule: keep its weights from silencing channels
                for p in m.parameters(recurse=False):
                    p.copy_(0.5 + torch.rand(p.shape, generator=gen))


def numbered_segments(units: list[PruningUnit]) -> list[tuple[int, list[int]]]:
    """Every unit's segments in unit order, as ``(unit index, root indices)``.

    A segment's position in this list is its number wherever segments are counted (the probe's
    attribution, the cost model).
    """
    return [(u.index, seg) for u in units for seg in u.segments]


def probe_attribution(model: nn.Module, units: list[PruningUnit], x: Tensor) -> dict[str, tuple[dict, dict]]:
    """For every leaf module: segment -> number of its input and output features in that segment.

    Segments are numbered as :func:`numbered_segments` lists them.
    """
    probe = copy.deepcopy(model).eval()
    _positivise(probe)
    leaves = _leaf_modules(probe)
    active: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str):
        def record(mod: nn.Module, inp: tuple, out: Tensor) -> None:
            if isinstance(out, Tensor) and inp and isinstance(inp[0], Tensor) and out.dim() >= 2:
                active.setdefault(name, (_channel_activity(inp[0]), _channel_activity(out)))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    state = {k: v.clone() for k, v in probe.state_dict().items()}
    result: dict[str, tuple[dict, dict]] = {}
    try:
        with torch.no_grad():
            probe(x)
            base = dict(active)
            for k, (index, seg) in enumerate(numbered_segments(units)):
                active.clear()
                zero_channels(probe, units[index], set(seg))
                probe(x)
                for name, (ain, aout) in active.items():
                    bin_, bout = base[name]
                    silent_in = int((bin_ & ~ain).sum()) if ain.shape == bin_.shape else 0
                    silent_out = int((bout & ~aout).sum()) if aout.shape == bout.shape else 0
                    entry = result.setdefault(name, ({}, {}))
                    if silent_in:
                        entry[0][k] = silent_in
                    if silent_out:
                        entry[1][k] = silent_out
                probe.load_state_dict(state)
    finally:
        for h in handles:
            h.remove()
    return result


def _mapping_error(module: str, m: nn.Module, unit: PruningUnit, detail: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(
        f"layer '{module}' ({type(m).__name__}) {detail} of unit '{unit.name}': channel pruning "
        "cannot follow this layout (e.g. a concatenation flattened straight into a Linear layer; "
        "pool globally before the classifier)"
    )


def check_structure(
    unit: PruningUnit, modules: dict[str, nn.Module], unsupported: dict[str, str]
) -> list[list[int]]:
    """Check what the dependency graph alone tells about ``unit``; returns its tie classes.

    Raises:
        UnsupportedModuleError: The unit reaches a layer in ``unsupported`` (as an item or
            through the layer's bare parameters), a grouped conv it cannot keep aligned, or a
            layer whose index map points past its channels.
    """
    for name in [i.module for i in unit.items] + unit.param_owners:
        if name in unsupported:
            raise UnsupportedModuleError(unsupported[name])
    for item in unit.items:
        m = modules[item.module]
        if not item.is_output and not _is_mixing(m):
            continue
        size = _width(m, item.is_output)
        if item.idxs and max(item.idxs) >= size:
            side = "output" if item.is_output else "input"
            raise _mapping_error(item.module, m, unit, f"has {size} {side} channels, fewer than the mapping")
    return _tie_classes(unit, modules)


def check_probed(
    unit: PruningUnit,
    segments: list[int],
    attribution: dict,
    leaves: dict[str, nn.Module],
    unsupported: dict[str, str],
) -> None:
    """Check ``unit`` against the zero-propagation probe (``segments``: its segment numbers).

    A layer without a pruning rule must see none of the unit's channels go silent, and every
    dense consumer must lose exactly the input features its index map says: torch-pruning's
    maps are wrong in a few layouts (a concatenation flattened straight into a Linear layer
    merges the branches), and pruning with them would break the network.

    Raises:
        UnsupportedModuleError: Naming the layer.
    """
    for name, message in unsupported.items():
        seen_in, seen_out = attribution.get(name, ({}, {}))
        if any(k in seen_in or k in seen_out for k in segments):
            raise UnsupportedModuleError(message)
    for item in unit.items:
        m = leaves.get(item.module)
        if item.is_output or m is None or not _is_mixing(m):
            continue
        seen = sum(attribution.get(item.module, ({}, {}))[0].get(k, 0) for k in segments)
        if seen != len(item.idxs):
            raise _mapping_error(
                item.module, m, unit, f"reads {seen} input features, not the mapped {len(item.idxs)},"
            )


def _screen(
    units: list[PruningUnit],
    check: Callable[[PruningUnit], object],
    strict: bool,
    dense: dict[str, list[str]],
) -> list[PruningUnit]:
    """The units that pass ``check``; each failure's message collects in ``dense`` with its unit.

    Raises:
        UnsupportedModuleError: The first failure, if ``strict``.
    """
    passed = []
    for u in units:
        try:
            check(u)
        except UnsupportedModuleError as exc:
            if strict:
                raise
            dense.setdefault(str(exc), []).append(u.name)
        else:
            passed.append(u)
    return passed


def _segment_ids(units: list[PruningUnit]) -> dict[int, list[int]]:
    """Unit id -> the numbers of its segments in :func:`numbered_segments` order."""
    out: dict[int, list[int]] = {}
    for k, (index, _) in enumerate(numbered_segments(units)):
        out.setdefault(id(units[index]), []).append(k)
    return out


def _keep_attribution(attribution: dict, before: dict[int, list[int]], after: dict[int, list[int]]) -> dict:
    """Renumber the probe's segment keys from the ``before`` units to the ``after`` ones (a subset)."""
    new = {k: k2 for unit, ks in after.items() for k, k2 in zip(before[unit], ks, strict=True)}
    return {
        name: tuple({new[k]: n for k, n in side.items() if k in new} for side in entry)
        for name, entry in attribution.items()
    }


def _warn_dense(dense: dict[str, list[str]], unsupported: dict[str, str]) -> None:
    for message in [*dense, *(m for m in unsupported.values() if m not in dense)]:
        units = dense.get(message, [])
        names = ", ".join(map(repr, units))
        left = f"unit{'s' * (len(units) > 1)} {names} not pruned" if units else "no unit reaches it"
        log.warning("%s; left dense (%s; strict=True refuses the model instead)", message, left)


def _macs_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per-leaf-module MACs (thop's rules, :func:`amc.cost.layer_costs`), summed over calls."""
    macs: dict[str, int] = {}
    for cost in layer_costs(model, input_shape):
        macs[cost.name] = macs.get(cost.name, 0) + cost.macs
    return macs


def _prunable_units(
    model: nn.Module, x: Tensor, shapes: dict, strict: bool
) -> tuple[list[PruningUnit], dict[str, tuple[dict, dict]]]:
    """The units channel pruning can follow, and the probe's attribution for them.

    Units reaching a layer that cannot be pruned are dropped (the layer stays dense) and a
    warning names the layer; with ``strict`` the first such layer raises instead.
    """
    unsupported = unsupported_layers(model)
    if strict and unsupported:
        raise UnsupportedModuleError(next(iter(unsupported.values())))
    modules, leaves = dict(model.named_modules()), _leaf_modules(model)
    dense: dict[str, list[str]] = {}

    def structure(u: PruningUnit) -> None:
        u.ties = check_structure(u, modules, unsupported)

    units = _screen(find_units(model, x, shapes), structure, strict, dense)
    for u in [u for u in units if len(u.ties) == 1]:
        log.info("unit '%s' cannot lose a channel (a grouped conv ties them all); not a unit", u.name)
        units.remove(u)
    _renumber(units)
    attribution = probe_attribution(model, units, torch.cat([x] * max(1, 4 // x.shape[0])))
    watched = {n: m for n, m in unsupported.items() if n in leaves}
    before = _segment_ids(units)
    units = _screen(
        units, lambda u: check_probed(u, before[id(u)], attribution, leaves, watched), strict, dense
    )
    _renumber(units)
    _warn_dense(dense, unsupported)
    return units, _keep_attribution(attribution, before, _segment_ids(units))


def analyse(
    model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32), strict: bool = False
) -> PruningGraph:
    """Find the pruning units of ``model`` and the data its cost model needs.

    Args:
        model: Any CNN built from Conv2d (dense, depthwise or grouped), Linear, BatchNorm and
            parameter-free layers; residual additions, concatenations and gates are handled.
            Other layers with weights are left dense, with the units that reach them.
        input_shape: Shape of one example input batch.
        strict: Refuse a model with a layer that cannot be pruned instead of leaving it dense.

    Raises:
        UnsupportedModuleError: With ``strict``: a layer with weights that cannot be
            channel-pruned, or a layout whose channel mapping the dependency graph gets wrong.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.rand(input_shape, generator=torch.Generator().manual_seed(0)).to(device) + 0.1
    shapes = _trace(model, x)
    units, attribution = _prunable_units(model, x, shapes, strict)
    leaves = _leaf_modules(model)
    macs = _macs_by_module(model, tuple(input_shape))
    infos = {}
    for name, (in_shape, out_shape) in shapes.items():
        m = leaves[name]
        params = {k: p.numel() for k, p in m.named_parameters(recurse=False)}
        in_attr, out_attr = attribution.get(name, ({}, {}))
        infos[name] = ModuleInfo(
            name,
            type(m).__name__,
            macs.get(name, 0),
            params,
            _is_mixing(m),
            in_shape[1],
            out_shape[1] if len(out_shape) > 1 else 1,
            in_attr,
            out_attr,
            tuple(in_shape[2:4]) if len(in_shape) == 4 else (1, 1),
        )
    model.train(was_training)
    heads = [n for n in reversed(shapes) if isinstance(leaves[n], (nn.Conv2d, nn.Linear))][:1]
    graph = PruningGraph(units, infos, tuple(input_shape), heads)
    from amc.pruning.cost import CostModel

    CostModel(graph).annotate_units()
    return graph
