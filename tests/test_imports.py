"""Packages import one way (README, Architecture): a static check of the import graph.

The layers, lowest first: `surgery` (generic: imports nothing of llm_dit) <- foundation
(errors, quiet messages, provenance, the synthetic world) <- the model layer (`llm_dit.models`,
`encoding`, `sampling`, `accel`) <- studies and the LightningModules (study, data, module,
training, results, ...) <- `callbacks` <- `report` and `cli`. A module imports only from its
own layer or below, the packages form no cycle, and project modules are imported at module
level (a function-level import usually hides a cycle), except where the imported module pulls
in an optional heavy dependency (ALLOWED_FUNCTION_IMPORTS says which and why) and in the command
line's dispatcher (LAZY_ENTRY_POINTS): it imports each subcommand's code when that subcommand runs,
so `--help` costs no torch or Lightning import, and since no project module imports it (checked
below), a function-level import there cannot hide a cycle.

Read with `ast` only: nothing is imported, so the check is fast and cannot be fooled by
import order or lazy attributes. A lazy package facade (llm_dit._lazy) imports by name at run
time, out of this check's sight: tests/test_lazy_imports.py holds each facade to exporting its
own package's submodules only.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("llm_dit", "surgery", "callbacks")

# Lowest first. A unit is a top-level package (surgery, callbacks) or a direct child of llm_dit;
# `llm_dit` itself is the lazy public facade (llm_dit/__init__.py), on top.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("generic surgery", ("surgery",)),
    ("foundation", ("llm_dit.errors", "llm_dit.quiet", "llm_dit.provenance", "llm_dit.world", "llm_dit._lazy")),
    ("model", ("llm_dit.models", "llm_dit.encoding", "llm_dit.sampling", "llm_dit.accel")),
    ("studies and LightningModules", (
        "llm_dit.study", "llm_dit.data", "llm_dit.outputs", "llm_dit.module", "llm_dit.module_settings", "llm_dit.training",
        "llm_dit.fit_data", "llm_dit.results", "llm_dit.resume", "llm_dit.run_folder", "llm_dit.run_guard",
        "llm_dit.world_model", "llm_dit.encode_study",
    )),
    ("callbacks", ("callbacks",)),
    ("report, lab and command line", (
        "llm_dit.report", "llm_dit.lab", "llm_dit.commands", "llm_dit.trainer_cli", "llm_dit.cli", "llm_dit.__main__",
        "llm_dit",
    )),
]

# (importing module, imported module) -> why a function-level import is right there.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    ("llm_dit.accel.fp8", "llm_dit.accel.gate_kernel"): "Triton kernels: optional, compiled on first use",
    ("llm_dit.accel.gate_kernel", "llm_dit.accel.fp8"): "Triton kernels: optional, compiled on first use",
}

# Entry points that import project modules inside functions on purpose: each subcommand's code is
# loaded when it runs (tests/test_lazy_imports.py checks `import llm_dit.cli` stays light). Only a
# module that no project module imports qualifies (ENTRY_POINT_IMPORTERS may), so a lazy import
# there can never close a cycle; the layers still apply to those imports.
LAZY_ENTRY_POINTS: dict[str, str] = {
    "llm_dit.cli": "dispatches subcommands; each one's code (torch, Lightning, FastAPI, ...) loads when it runs",
}
ENTRY_POINT_IMPORTERS = ("llm_dit.__main__",)  # `python -m llm_dit` runs the cli

# Owned by parallel work of issue 19 (the hook-registry branch moves the Z-Image pieces out of
# surgery/; the trained embedded model's branch owns world_model/ and loading's `_load_resolved`).
# A module, or an (importing, imported) pair of a function-level import. Delete each entry once
# that work has landed: the test then holds those modules to the same rules.
PENDING: dict[str | tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a name imported from a package counts as that package)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PROJECT for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package[: len(package) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from llm_dit import errors` imports the module llm_dit.errors, not the facade
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            for target in targets:
                if target.split(".")[0] in PROJECT:
                    found.append(Import(name, target, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "llm_dit" and len(parts) > 1:
        return f"llm_dit.{parts[1]}"
    return parts[0]


def layer_of(unit: str) -> int | None:
    for index, (_, units) in enumerate(LAYERS):
        if unit in units:
            return index
    return None


def all_imports() -> list[Import]:
    modules = project_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, set(modules))]


def is_pending(module: str, target: str | None = None) -> bool:
    return module in PENDING or (module, target) in PENDING


def test_every_package_has_a_layer() -> None:
    missing = sorted({unit_of(name) for name in project_modules()} - {u for _, units in LAYERS for u in units})
    assert not missing, f"add these packages/modules to LAYERS in tests/test_imports.py: {missing}"


def test_imports_run_one_way() -> None:
    violations = []
    for imp in all_imports():
        if is_pending(imp.source):
            continue
        here, there = layer_of(unit_of(imp.source)), layer_of(unit_of(imp.target))
        if here is not None and there is not None and there > here:
            violations.append(
                f"{imp.source}:{imp.line} imports {imp.target} ({LAYERS[there][0]} layer, above {LAYERS[here][0]})"
            )
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_surgery_is_generic() -> None:
    offenders = [f"{i.source}:{i.line} -> {i.target}" for i in all_imports()
                 if unit_of(i.source) == "surgery" and unit_of(i.target) != "surgery" and not is_pending(i.source)]
    assert not offenders, "surgery must import nothing of llm_dit or callbacks:\n" + "\n".join(offenders)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_package_cycles() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports():
        source, target = unit_of(imp.source), unit_of(imp.target)
        if source != target and not is_pending(imp.source):
            graph[source].add(target)
    cycle = find_cycle(graph)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_no_function_level_project_imports() -> None:
    hidden = [f"{i.source}:{i.line} imports {i.target} inside a function"
              for i in all_imports()
              if i.in_function and (i.source, i.target) not in ALLOWED_FUNCTION_IMPORTS
              and i.source not in LAZY_ENTRY_POINTS
              and not is_pending(i.source, i.target)]
    assert not hidden, ("import project modules at the top of the file (a function-level import usually hides "
                        "a cycle), or add the pair to ALLOWED_FUNCTION_IMPORTS with the heavy optional "
                        "dependency it defers:\n" + "\n".join(hidden))


def test_lazy_entry_points_are_imported_by_nothing() -> None:
    """The premise of LAZY_ENTRY_POINTS: a module nothing imports cannot be part of a cycle."""
    importers = [f"{i.source}:{i.line} imports {i.target}" for i in all_imports()
                 if i.target in LAZY_ENTRY_POINTS and i.source not in ENTRY_POINT_IMPORTERS]
    assert not importers, ("an entry point that imports lazily (LAZY_ENTRY_POINTS) must not be imported by project "
                           "code; move what is needed into a module below it:\n" + "\n".join(importers))
