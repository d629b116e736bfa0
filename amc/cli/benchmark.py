"""``amc benchmark``: the measurements quoted in the README, as commands."""

from __future__ import annotations

import argparse
import json

import torch

from amc.benchmark import latency_prediction, pruning_speedup, selection_table
from amc.data import load_dataset
from amc.models import create_model, resolve_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc benchmark``."""
    p = sub.add_parser(
        "benchmark",
        help="measure episode overhead, pruning speed-up, latency prediction",
        description="Benchmarks quoted in the README. Ratios are against a baseline measured "
        "in the same run (alternated), medians.",
    )
    p.add_argument(
        "what",
        choices=["overhead", "speedup", "latency", "envs", "selection"],
        help="overhead: default search episode (reconstruction, BN recalibration, scoring, agent "
        "update) / dense forward; speedup: latency vs FLOPs speed-up "
        "at 50%% FLOPs; latency: table prediction vs measurement; envs: parallel episodes; "
        "selection: uniform 50%% FLOPs with/without reconstruction and BN recalibration",
    )
    p.add_argument("--models", nargs="+", default=["resnet20"], help="zoo models (default: resnet20)")
    p.add_argument("--checkpoint", default="shipped", help="'shipped' (if any) or 'none'")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="search images scored per episode, for 'overhead' and 'envs' (default: amc search's)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="repetitions (default: 7 for overhead, 60 for speedup)"
    )
    p.add_argument("--target", type=float, default=0.5, help="FLOPs ratio of the pruned model (default: 0.5)")
    p.add_argument("--batch", type=int, default=32, help="batch size of latency measurements (default: 32)")
    p.add_argument(
        "--round-to",
        type=int,
        default=1,
        help="kept channels are multiples of this, for 'speedup' (default: 1)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="with 'speedup': also time both models exported to ONNX and run by onnxruntime "
        "(needs the onnx extra)",
    )
    p.add_argument("--envs", type=int, default=2, help="parallel environments for 'envs' (default: 2)")
    p.add_argument("--episodes", type=int, default=8, help="timed episodes for 'envs' (default: 8)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=cmd_benchmark)


def _checkpoint(name: str, checkpoint: str) -> str | None:
    """The checkpoint's path, or ``None`` where there is none: timing does not depend on the weights."""
    try:
        path, _ = resolve_checkpoint(name, checkpoint)
    except ValueError:
        return None
    return None if path is None else str(path)


def _model(name: str, checkpoint: str) -> torch.nn.Module:
    return create_model(name, checkpoint=_checkpoint(name, checkpoint))


DEFAULT_REPEATS = {"overhead": 7, "speedup": 60}
"""Repetitions per benchmark when ``--repeats`` is not given: a speed-up ratio of two short
latencies needs many more to settle than the overhead of a whole episode."""


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run one benchmark and print its table (and JSON with --json)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    args.repeats = args.repeats or DEFAULT_REPEATS.get(args.what, 7)
    results = {}
    if args.what == "overhead":
        from amc.agents.overhead import episode_overhead
        from amc.envs.config import EnvConfig
        from amc.envs.pruning_env import PruningEnv

        for name in args.models:
            env = PruningEnv(
                EnvConfig(
                    model=name,
                    checkpoint=args.checkpoint if _checkpoint(name, args.checkpoint) else "none",
                    search_images=args.images or EnvConfig.search_images,
                    threads=args.threads,
                )
            )
            results[name] = r = episode_overhead(env, args.repeats)
            print(
                f"{name:<14} dense {r['dense_s']:.3f} s  episode {r['episode_s']:.3f} s  "
                f"ratio {r['ratio']:.3f}  ({r['images']} images, median of {args.repeats})"
            )
            print(
                " " * 15
                + "  ".join(f"{k} {r['parts_s'][k]:.3f} s ({100 * v:.0f} %)" for k, v in r["shares"].items())
            )
    elif args.what == "speedup":
        if args.onnx:
            from amc.export import require_onnx

            require_onnx()
        for name in args.models:
            results[name] = pruning_speedup(
                _model(name, args.checkpoint),
                args.target,
                args.batch,
                args.repeats,
                round_to=args.round_to,
                onnx=args.onnx,
            )
            r = results[name]
            forms = [("", "eager"), ("deployed_", "BN folded")] + [("onnx_", "ONNX")] * args.onnx
            for prefix, form in forms:
                dense, pruned = r[prefix + "dense_ms"], r[prefix + "pruned_ms"]
                print(
                    f"{name:<14} {form:<9} latency {dense:.2f} -> {pruned:.2f} ms "
                    f"(x{r[prefix + 'latency_speedup']:.2f}), FLOPs x{r['flops_speedup']:.2f}, "
                    f"ratio {r[prefix + 'ratio']:.3f} (batch {r['batch']}, round_to {r['round_to']})"
                )
    elif args.what == "latency":
        for name in args.models:
            results[name] = latency_prediction(_model(name, args.checkpoint), args.target, args.batch)
            r = results[name]
            print(
                f"{name:<14} dense predicted {r['dense_predicted_ms']:.2f} / "
                f"measured {r['dense_measured_ms']:.2f} ms; pruned predicted "
                f"{r['pruned_predicted_ms']:.2f} / measured {r['pruned_measured_ms']:.2f} ms"
            )
    elif args.what == "selection":
        name = args.models[0]
        results = selection_table(lambda: _model(name, args.checkpoint), load_dataset("sample"), args.target)
        for key, top1 in results.items():
            print(f"{key:<38} top-1 {top1:6.2f} %")
    else:  # envs
        from amc.agents.parallel import episodes_per_second
        from amc.envs.config import EnvConfig

        images = args.images or EnvConfig.search_images
        config = EnvConfig(model=args.models[0], search_images=images, threads=args.threads)
        one = episodes_per_second(config, 1, args.episodes)
        many = episodes_per_second(config, args.envs, args.episodes)
        results = {"envs_1": one, f"envs_{args.envs}": many, "speedup": many / one}
        print(f"episodes/s: 1 env {one:.3f}, {args.envs} envs {many:.3f}, speed-up x{many / one:.2f}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0
