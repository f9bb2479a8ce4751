"""The shape of the code (issue 12): layers without import cycles, short functions, one path from a config ID
to its model."""
import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hdit", "baselines")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _layer(module: str) -> str:
    """hdit.model.layers -> hdit.model; baselines.dit -> baselines; hdit.train -> hdit.train."""
    parts = module.split(".")
    return parts[0] if parts[0] == "baselines" else ".".join(parts[:2])


def _imports(path: Path, mods: dict) -> set[str]:
    """Every project module `path` imports, at module level or inside a function (a lazy import is still a
    dependency)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in mods}
    return out


def test_no_import_cycle_between_layers():
    mods = _modules()
    graph = collections.defaultdict(set)
    for name, path in mods.items():
        for dep in _imports(path, mods):
            if _layer(dep) != _layer(name):
                graph[_layer(name)].add(_layer(dep))

    def reachable(start):
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()] - seen:
                seen.add(nxt)
                stack.append(nxt)
        return seen

    assert [layer for layer in list(graph) if layer in reachable(layer)] == []
    assert "baselines" not in graph["hdit.model"]  # HDiT never imports a baseline; the registry is above both
    from hdit.backbones import BACKBONES  # the registry above both names its families' modules

    assert {_layer(module) for module, _ in BACKBONES.values()} == {"hdit.model", "baselines"}


def test_no_function_over_sixty_lines():
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


@pytest.mark.parametrize("config_id,family", [("E", "hdit"), ("R1", "dit"), ("diffit-cifar10", "diffit")])
def test_config_id_reaches_its_model_through_the_registry(config_id, family):
    import torch

    from hdit.backbones import BACKBONES, build_model
    from hdit.profiles import resolve

    run = resolve(config_id, "default")  # hop 1: profile; 2: RunConfig.model; 3: build_model; 4: the class
    with torch.device("meta"):
        model = build_model(run.model)
    assert run.model.family == family and type(model).__name__ == BACKBONES[family][1]
