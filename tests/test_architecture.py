"""The package reads downward (docs/ARCHITECTURE.md): its import graph, read from the source (imports inside
functions included), has no cycle, no stage module imports another, and every import goes to the same floor or
a lower one."""

import ast
from pathlib import Path

import llm4all_recipes

PACKAGE = Path(llm4all_recipes.__file__).parent

# Floors, lowest first, by the first name under llm4all_recipes (a module or a subpackage): the table of
# docs/ARCHITECTURE.md. A new module gets a line here; the test fails until it has one.
FLOORS = [
    {"errors", "fields", "paths", "resolved"},
    {"compression", "speech", "data", "models", "merging", "tiny"},
    {"configs", "parsing", "tracking", "outputs", "cards", "hub"},
    {"training", "trainers", "evaluation"},
    {"stages"},
    {"pipeline", "estimate", "cli", "__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (relative or absolute, at any depth of the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [
                a.name.removeprefix("llm4all_recipes.") for a in node.names if a.name.startswith("llm4all_recipes.")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("llm4all_recipes"):
                module = node.module.removeprefix("llm4all_recipes").lstrip(".")
            else:
                continue
            prefix = f"{module}." if module else ""
            targets = [f"{prefix}{a.name}" if f"{prefix}{a.name}" in known else module for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t and t != name}
    return out


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items() if name}


def test_every_module_has_a_floor():
    assert sorted({n.split(".")[0] for n in GRAPH} - set(FLOOR)) == []


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_stage_imports_a_stage():
    stage_modules = {n for n in GRAPH if n.startswith("stages.")}
    assert {n: sorted(GRAPH[n] & stage_modules) for n in stage_modules if GRAPH[n] & stage_modules} == {}


def test_imports_go_down_or_sideways():
    upward = sorted(
        f"{n} -> {d}" for n, deps in GRAPH.items() for d in deps if FLOOR[d.split(".")[0]] > FLOOR[n.split(".")[0]]
    )
    assert upward == []


def test_the_graph_is_read():  # the parser itself: known edges are found, relative and absolute, at any depth
    assert (
        "stages" in GRAPH["pipeline"] and "compression" in GRAPH["models"]
    )  # `from . import compression` in a function
    assert "evaluation.perplexity" in GRAPH["stages.kd"] and "data.packing" in GRAPH["evaluation.perplexity"]
