"""Print the package's import graph (module-level and function-level imports alike), its cycles and
any import that climbs to a higher floor.

python tools/import_graph.py        # exits 1 if there is a cycle or an upward import
"""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# The package's folders from the bottom up: a module imports from its own floor or those below.
# core: start-up, the family registry, atomic files, CPU facts, reports; input: images in, labels
# out; nn: layers and blocks; weights: reading checkpoints and the weights zoo; models: the
# families and their builders; deploy: inference form, predict, export; train: training and
# evaluation; the package itself and cli.py on top.
FLOORS = ("core", "input", "nn", "weights", "models", "deploy", "train", "")


def modules(root: str = ROOT) -> dict[str, str]:
    """``{dotted name: file}`` of every module of the package."""
    found = {}
    for folder, _, names in os.walk(os.path.join(root, "keras_inception")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def graph(root: str = ROOT) -> dict[str, set[str]]:
    """Each module's imports of the package's modules, wherever in the file they stand."""
    mods = modules(root)
    edges = {}
    for mod, path in mods.items():
        deps = set()
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_inception"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("keras_inception")}
        edges[mod] = {
            d for d in deps if d != mod and not mod.startswith(f"{d}.")
        }  # a package is not its child's import
    return edges


def floor(module: str) -> int:
    """The floor of ``keras_inception.<folder>.<module>`` (the top floor for the package and cli)."""
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else len(FLOORS) - 1


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module on a higher floor."""
    return sorted((m, d) for m, deps in edges.items() for d in deps if floor(d) > floor(m))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


if __name__ == "__main__":
    edges = graph()
    for mod in sorted(edges):
        print(f"{mod:40s} -> {', '.join(sorted(edges[mod])) or '-'}")
    loops = cycles(edges)
    print("cycles:", loops or "none")
    climbs = upward(edges)
    print("upward imports:", climbs or "none")
    sys.exit(1 if loops or climbs else 0)
