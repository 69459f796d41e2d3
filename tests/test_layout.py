"""The package's architecture as tests: no import cycles, the registry at the bottom."""

import importlib.util
import os

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "import_graph.py")
spec = importlib.util.spec_from_file_location("import_graph", TOOL)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_no_import_cycles_even_through_function_level_imports():
    edges = import_graph.graph()
    assert "keras_inception.models" in edges["keras_inception.cli"]  # the scan sees function-level imports
    assert import_graph.cycles(edges) == []


def test_nothing_below_models_imports_models():
    edges = import_graph.graph()
    for low in ("registry", "files", "layers", "imagenet"):
        assert edges[f"keras_inception.{low}"] == set(), low
    for mod in ("checkpoint", "pretrained", "slim", "export", "preprocessing", "data", "evaluation"):
        assert not any(d.startswith("keras_inception.models") for d in edges[f"keras_inception.{mod}"]), mod


def test_cycles_are_found():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
