"""Each ``amc`` command offers exactly the options it reads.

``--help`` is parsed for the options it lists, and the command's code is read (an AST walk of its
``cmd_*`` function and every amc.cli function the namespace is handed to) for the attributes it
reads: every option a command defines must be read, and it must read no attribute it does not
define (which would be an AttributeError on some path).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import dataclasses
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable

import pytest

from amc.cli import build_parser, main

COMMANDS = ("evaluate", "train", "search", "apply", "compare", "summarize", "benchmark")
SET_BY_MAIN = {"argv"}  # main() adds the command line to the namespace
FOLLOWED = ("amc.cli",)
"""Modules whose functions the walk follows the namespace into (anywhere else: UnanalysableError)."""


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def help_options(command: str, capsys) -> set[str]:
    """The options ``amc <command> --help`` describes (its option lines, not the usage line)."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    options = set()
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"^ {2}(-\S.*?)(?: {2,}|$)", line)  # "  --target TARGET     budget as ..."
        if match:
            options |= set(re.findall(r"(?:^|, )(--?[\w-]+)", match.group(1)))
    return options - {"-h", "--help"}


# --- what a command reads: a walk of its code ---------------------------------------------------


@dataclasses.dataclass
class Reads:
    required: set[str] = dataclasses.field(default_factory=set)  # read whenever reached
    optional: set[str] = dataclasses.field(default_factory=set)  # read if present (`in`, getattr default)


class UnanalysableError(Exception):
    """The namespace is used in a way the walk cannot follow (so the check would not be sound)."""


def _resolve(name: str, func: Callable, tree: ast.AST):
    """What ``name`` means inside ``func``: a module global, or a name imported inside the function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return getattr(importlib.import_module(node.module), alias.name)
    if name in func.__globals__:
        return func.__globals__[name]
    if hasattr(builtins, name):
        return getattr(builtins, name)
    raise UnanalysableError(f"{func.__qualname__}: cannot resolve {name}")


def _dataclass_fields_loop(node: ast.AST, parents: dict, param: str, func: Callable, tree: ast.AST):
    """``getattr(args, f.name) for f in fields(Config) [if f.name in args]``: (field names, guarded)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.DictComp, ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            for gen in node.generators:
                call = gen.iter
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == "fields"
                    and len(call.args) == 1
                    and isinstance(call.args[0], ast.Name)
                ):
                    cls = _resolve(call.args[0].id, func, tree)
                    guarded = any(
                        isinstance(c, ast.Compare)
                        and isinstance(c.ops[0], ast.In)
                        and isinstance(c.comparators[0], ast.Name)
                        and c.comparators[0].id == param
                        for c in gen.ifs
                    )
                    return {f.name for f in dataclasses.fields(cls)}, guarded
    return None


def reads_of(func: Callable, param: str = "args", seen: set | None = None) -> Reads:
    """The attributes ``func`` (and the amc.cli functions it passes ``param`` to) reads from ``param``."""
    seen = set() if seen is None else seen
    reads = Reads()
    if (func, param) in seen:
        return reads
    seen.add((func, param))
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    where = f"{func.__module__}.{func.__qualname__}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == param and isinstance(node.ctx, ast.Load)):
            continue
        parent = parents[node]
        if isinstance(parent, ast.Attribute):
            if isinstance(parent.ctx, ast.Load):
                reads.required.add(parent.attr)
            continue  # a store (args.repeats = ...) reads nothing
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == "getattr":
            name = parent.args[1]
            if isinstance(name, ast.Constant):
                (reads.optional if len(parent.args) == 3 else reads.required).add(name.value)
                continue
            loop = _dataclass_fields_loop(parent, parents, param, func, tree)
            if loop is None:
                raise UnanalysableError(f"{where}: getattr({param}, <expression>) outside a fields() loop")
            names, guarded = loop
            (reads.optional if guarded else reads.required).update(names)
            continue
        if isinstance(parent, ast.Compare) and node in parent.comparators:
            if isinstance(parent.left, ast.Constant):
                reads.optional.add(parent.left.value)
            elif _dataclass_fields_loop(parent, parents, param, func, tree) is None:
                raise UnanalysableError(f"{where}: <expression> in {param} outside a fields() loop")
            continue
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name):
            callee = _resolve(parent.func.id, func, tree)
            if not (inspect.isfunction(callee) and callee.__module__.startswith(FOLLOWED)):
                raise UnanalysableError(f"{where}: {param} is handed to {parent.func.id}, outside {FOLLOWED}")
            names = list(inspect.signature(callee).parameters)
            if node in parent.args:
                target = names[parent.args.index(node)]
            else:
                target = next(k.arg for k in parent.keywords if k.value is node)
            inner = reads_of(callee, target, seen)
            reads.required |= inner.required
            reads.optional |= inner.optional
            continue
        raise UnanalysableError(f"{where}, line {node.lineno}: {ast.unparse(parent)}")
    return reads


def check(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(options ``parser`` defines that its command never reads, attributes it reads but lacks)."""
    reads = reads_of(parser.get_default("func"))
    defined = dests(parser)
    return defined - reads.required - reads.optional, reads.required - defined - SET_BY_MAIN


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_read_and_nothing_else(command):
    unread, undefined = check(subparsers()[command])
    assert not unread, f"amc {command} defines options it never reads: {sorted(unread)}"
    assert not undefined, f"amc {command} reads attributes its parser lacks: {sorted(undefined)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_exactly_the_parsers_options(command, capsys):
    parser = subparsers()[command]
    declared = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}
    assert help_options(command, capsys) == declared


ENV_ONLY_SEARCH = {"--reward", "--selection-images"}
NOT_COMPARE = {"--mode", "--nm", "--reward", "--latency-batch"}


def test_apply_lists_no_search_only_options(capsys):
    options = help_options("apply", capsys)
    assert not options & ENV_ONLY_SEARCH
    # apply --agent rolls the agent out in an environment: its budget, action space and scoring
    rollout = {"--target", "--mode", "--nm", "--max-sparsity", "--round-to", "--latency-batch"}
    rollout |= {"--criterion", "--no-reconstruct", "--search-images"}
    assert rollout | {"--no-recalibrate", "--strict", "--policy", "--agent"} <= options


def test_compare_lists_no_mode_reward_or_latency_options(capsys):
    options = help_options("compare", capsys)
    assert not options & NOT_COMPARE
    assert {"--target", "--search-images", "--selection-images", "--no-recalibrate", "--strict"} <= options


def test_search_lists_every_environment_option(capsys):
    options = help_options("search", capsys)
    assert ENV_ONLY_SEARCH | NOT_COMPARE <= options
    assert {"--target", "--max-sparsity", "--round-to", "--criterion", "--no-reconstruct"} <= options
    assert {"--no-recalibrate", "--search-images", "--strict"} <= options


@pytest.mark.parametrize("command", ["evaluate", "train", "summarize", "benchmark"])
def test_commands_without_an_environment_list_no_environment_options(command, capsys):
    options = help_options(command, capsys)
    env = {"--mode", "--reward", "--search-images", "--selection-images", "--no-reconstruct", "--strict"}
    assert not options & env


def test_the_environment_defaults_of_apply_and_compare_are_the_searchs():
    """Options a command lacks keep the values a search gets by default."""
    from amc.cli.apply import apply_env_config
    from amc.cli.compare import compare_env_config
    from amc.cli.search import search_env_config

    search = search_env_config(build_parser().parse_args(["search"]))
    apply = apply_env_config(build_parser().parse_args(["apply"]))
    compare = compare_env_config(build_parser().parse_args(["compare"]))
    assert apply == search and compare == search
    no_budget = ["--target", "none"]
    search = search_env_config(build_parser().parse_args(["search", *no_budget]))
    assert apply_env_config(build_parser().parse_args(["apply", *no_budget])) == search
    assert search.reward == "acc_flops"


# --- the walk itself finds what it should -------------------------------------------------------


def _toy_parser(cmd: Callable) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--used")
    p.add_argument("--unused")
    p.set_defaults(func=cmd)
    return p


def _helper(ns):
    return ns.used


def _cmd_reads_one(args):
    return _helper(args)


def _cmd_reads_a_missing_one(args):
    return args.used, args.unused, args.gone


def _cmd_escapes(args):
    return print(args)


def test_the_walk_finds_unread_missing_and_escaping_attributes(monkeypatch):
    monkeypatch.setattr(f"{__name__}.FOLLOWED", ("amc.cli", __name__))
    assert check(_toy_parser(_cmd_reads_one)) == ({"unused"}, set())  # followed into _helper(ns)
    assert check(_toy_parser(_cmd_reads_a_missing_one)) == (set(), {"gone"})
    with pytest.raises(UnanalysableError, match="handed to print"):
        check(_toy_parser(_cmd_escapes))
