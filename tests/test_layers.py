"""Lower layers never import higher ones: a static scan of every `import` in src/latentrl (function-level ones
included), checked against the layer map below. The few upward edges that remain are listed by name, so a new
one fails here and removing one means deleting its line (issue 17 tracks them)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# rank of each module (longest matching prefix wins); an import may only go to the same rank or lower
LAYERS: dict[str, int] = {
    "latentrl.assets": 0, "latentrl.checkpoint": 0, "latentrl.tokenizer": 0, "latentrl.rewards": 0,
    "latentrl.data": 0, "latentrl.rl.losses": 0, "latentrl.rl.advantages": 0,  # pure functions on tensors
    "latentrl.cpu_allocator": 0,
    "latentrl.config": 1, "latentrl.logger": 1, "latentrl.run_dir": 1, "latentrl.chat": 1,
    "latentrl.model": 2, "latentrl.testing": 2, "latentrl.compute": 2, "latentrl.packed_head": 2,
    "latentrl.sampling": 3, "latentrl.decoding": 3, "latentrl.thoughts": 3, "latentrl.rollout": 3,
    "latentrl.head_logprobs": 3, "latentrl.replay": 3,
    "latentrl.eval": 4, "latentrl.thought_dependence": 4, "latentrl.optimizer_steps": 4, "latentrl.rl.batch": 4, "latentrl.rl.distributed": 4, "latentrl.rl.fsdp": 4,
    "latentrl.sft": 5, "latentrl.rl.trainer": 5, "latentrl.methods": 5,
    "latentrl.thought_inspection": 5,
    "latentrl.pretrain": 6, "latentrl.inits": 6, "latentrl.bench": 6, "latentrl.demo": 6, "latentrl.cli": 6, "latentrl": 6,
}

# upward edges still in the code (none today; add one here only with a reason)
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every latentrl import statement, at any depth of the file."""
    edges = set()
    for path in (SRC / "latentrl").rglob("*.py"):
        here = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            edges |= {(here, n) for n in names if n == "latentrl" or n.startswith("latentrl.")}
    return edges


def test_every_module_has_a_layer():
    modules = {_module(p) for p in (SRC / "latentrl").rglob("*.py")}
    assert modules and all(any(m == p or m.startswith(p + ".") for p in LAYERS) for m in modules)


def test_lower_layers_never_import_higher_ones():
    upward = {(a, b) for a, b in import_edges() if _rank(b) > _rank(a)}
    assert upward - KNOWN_UPWARD == set(), "a lower layer imports a higher one"
    assert KNOWN_UPWARD - upward == set(), "a known upward import is gone: delete it from KNOWN_UPWARD"


def test_the_scan_sees_function_level_imports():
    # the CLI imports the benchmark inside a function: a scan of module-level imports alone would miss it
    assert ("latentrl.cli", "latentrl.bench") in import_edges()


def test_presets_reach_the_config_without_it_importing_the_methods():
    from latentrl.config import METHOD_PRESETS, GRPOConfig
    from latentrl.methods import METHODS

    assert set(METHODS) <= set(METHOD_PRESETS)
    assert GRPOConfig.for_method("hrpo", model_name_or_path="m").temperature == METHODS["hrpo"].defaults.get(
        "temperature", GRPOConfig.for_method("grpo", model_name_or_path="m").temperature)
    assert GRPOConfig.preset_defaults({"method": "hrpo"}) == dict(METHODS["hrpo"].defaults)


def test_no_import_cycles():
    # same-layer modules may import each other, but never in a circle (the root package `latentrl`, which
    # re-exports the public names, is left out: every module is imported through it)
    graph: dict[str, set[str]] = {}
    for a, b in import_edges():
        if "latentrl" not in (a, b):
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
