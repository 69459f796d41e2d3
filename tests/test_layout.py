"""The package's architecture as tests: no import cycles, the registry at the bottom, no TensorFlow
for the models and their weights."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from slim_kit import random_variables, write_checkpoint  # TensorFlow, in this process only

from keras_inception.weights import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "import_graph.py")
spec = importlib.util.spec_from_file_location("import_graph", TOOL)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_no_import_cycles_even_through_function_level_imports():
    edges = import_graph.graph()
    assert "keras_inception.models" in edges["keras_inception.cli"]  # the scan sees function-level imports
    assert import_graph.cycles(edges) == []


def test_every_folder_is_a_floor_and_nothing_imports_upwards():
    edges = import_graph.graph()
    folders = {m.split(".")[1] for m in edges if m.count(".") >= 1 and os.path.isdir(
        os.path.join(ROOT, *m.split(".")[:2]))}  # fmt: skip
    assert folders == set(import_graph.FLOORS) - {""}  # a new folder is given its floor
    assert import_graph.upward(edges) == []
    for low in ("core.registry", "core.atomic", "nn.layers_tf", "input.imagenet"):
        assert edges[f"keras_inception.{low}"] <= {"keras_inception.core.atomic"}, low
    assert edges["keras_inception.nn.layers"] == {"keras_inception.nn.layers_tf"}  # on TensorFlow only


def test_an_upward_import_is_found():
    edges = {"keras_inception.nn.layers": {"keras_inception.models.base"}, "keras_inception.cli": {"x"}}
    assert import_graph.upward(edges) == [("keras_inception.nn.layers", "keras_inception.models.base")]


def test_cycles_are_found():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


# Run under JAX with `tensorflow` made unimportable: the models, their weights (a cached
# "imagenet" entry, a .weights.h5 file, a .keras file, a slim checkpoint where the pure
# reader is present) and the NumPy preprocessing never need it.
NO_TENSORFLOW = """
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, NoTensorFlow())

import numpy as np
import keras
import keras_inception as ki
from keras_inception.deploy import folding as inference

assert keras.backend.backend() == "jax"
small = dict(include_top=False, input_shape=(75, 75, 3), final_endpoint="Mixed_5b")
model = ki.InceptionV3(weights="imagenet", **small)  # the cached entry, read offline
x = ki.eval_transform(np.random.default_rng(0).integers(0, 256, (2, 90, 120, 3), dtype=np.uint8), 75)
y = np.asarray(model.predict(x, verbose=0))
model.save_weights("small.weights.h5")
model.save("small.keras")
again = ki.InceptionV3(weights="small.weights.h5", **small)
np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), y, atol=1e-5)
loaded = keras.saving.load_model("small.keras")
np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), y, atol=1e-5)
folded = inference.fold_batchnorm(model)
np.testing.assert_allclose(np.asarray(folded.predict(x, verbose=0)), y, atol=1e-4)
assert ki.decode_predictions(np.eye(1000)[:1] * 0.9, top=1)[0][0][:2] == ("n01440764", "tench")
assert float(ki.preprocess_input(np.array([255]))[0]) == 1.0
if len(sys.argv) > 1:  # a slim checkpoint, read without TensorFlow
    from_checkpoint = ki.InceptionV3(weights=sys.argv[1], **small)
    np.testing.assert_allclose(np.asarray(from_checkpoint.predict(x, verbose=0)), y, atol=1e-5)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")))
"""


def _cache_inception_v3(home, variables) -> None:
    """``variables`` as the cached ``weights="imagenet"`` entry of inception_v3 under ``home``."""
    directory = os.path.join(home, "models", "keras_inception")
    os.makedirs(directory)
    digest = {zoo.DIGEST_KEY: zoo._arrays_sha256(variables)}
    np.savez(os.path.join(directory, "inception_v3_imagenet.npz"), **variables, **digest)


def _run_without_tensorflow(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="jax", KERAS_HOME=str(tmp_path / "home"), PYTHONPATH=ROOT)
    env[zoo.URL_ENV] = "http://127.0.0.1:9/unreachable/"  # the cache, never a download
    return subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_models_and_weights_under_jax_never_import_tensorflow(tmp_path):
    _cache_inception_v3(str(tmp_path / "home"), random_variables("inception_v3"))
    run = _run_without_tensorflow(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_tensorflow_modules_name_the_extra_without_tensorflow(tmp_path):
    script = NO_TENSORFLOW.split("import numpy")[0] + (
        "import keras_inception as ki\n"
        "for name in ('data', 'preprocessing', 'export'):\n"
        "    try:\n"
        "        getattr(ki, name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        print(error)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.stdout.splitlines() == [
        "keras_inception.input.pipelines needs TensorFlow (tf.data pipelines): "
        "pip install 'keras-inception[tensorflow]'",
        "keras_inception.input.preprocessing needs TensorFlow (image decoding and tf.image transforms): "
        "pip install 'keras-inception[tensorflow]'",
        "keras_inception.deploy.export needs TensorFlow (SavedModel, LiteRT and ONNX export): "
        "pip install 'keras-inception[export]'",
    ], run.stderr[-3000:]


@pytest.mark.skipif(
    importlib.util.find_spec("keras_inception.weights") is None
    or importlib.util.find_spec("keras_inception.weights.tf_checkpoint") is None,
    reason="needs the pure-NumPy checkpoint reader keras_inception.weights.tf_checkpoint (issue 23, item 3)",
)
@pytest.mark.slow  # 13 s; .ci/run loads weights on JAX without TensorFlow from the installed wheel
def test_slim_checkpoints_load_under_jax_without_tensorflow(tmp_path):
    variables = random_variables("inception_v3")
    _cache_inception_v3(str(tmp_path / "home"), variables)
    prefix = write_checkpoint(variables, str(tmp_path / "ckpt" / "inception_v3.ckpt"), "V1")
    run = _run_without_tensorflow(tmp_path, prefix)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_a_family_is_declared_once_in_its_module_and_the_tables_follow():
    from keras_inception.core import registry
    from keras_inception.models import MODELS

    assert list(MODELS) == list(registry.FAMILIES) == list(registry.BUILDERS)
    for name, builder in MODELS.items():
        declared = vars(sys.modules[builder.__module__]).values()
        assert name in {value.name for value in declared if isinstance(value, registry.Family)}
    assert {family for family, _ in registry.PRETRAINED} <= set(registry.FAMILIES)
    assert all(config.family == family for (family, _), config in registry.PRETRAINED.items())
    with pytest.raises(ValueError, match="family 'inception_v4' is declared twice"):
        registry.register(registry.FAMILIES["inception_v4"])(MODELS["inception_v4"])
