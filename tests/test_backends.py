"""The networks on Keras's JAX and PyTorch backends, against the TensorFlow backend.

This process runs TensorFlow; each other backend runs in a subprocess (Keras picks its
backend once per process): keras.applications' contract (``tests/test_contract.py``),
and ``tests/backend_job.py``: Inception-v3 from a slim checkpoint, its official archive,
``weights="imagenet"`` through a local HTTP mirror and the download cache, ``.keras``
and ``.weights.h5`` files written here, all equal to this backend's logits; then ``fit``.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from slim_kit import pack, random_variables, serve, write_checkpoint

import keras_inception as ki
from keras_inception.core import registry
from keras_inception.core.precision import full_precision
from keras_inception.train import training
from keras_inception.weights import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def needs(name: str):
    return pytest.mark.skipif(not importlib.util.find_spec(name), reason=f"{name} not installed")


# JAX compiles every op on a CPU (its parity-and-fit job alone took 219 s of a 2-core CI run):
# it runs under -m slow; PyTorch in the default run
BACKENDS = [
    pytest.param("jax", marks=[needs("jax"), pytest.mark.slow]),
    pytest.param("torch", marks=needs("torch")),
]
ARCHIVE = registry.pretrained_config("inception_v3", "imagenet").archive


def backend_env(backend: str, **extra: str) -> dict:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A slim checkpoint, its archive in a mirror, TF-backend logits and Keras files."""
    root = tmp_path_factory.mktemp("backends")
    variables = random_variables("inception_v3", seed=3)
    prefix = write_checkpoint(variables, str(root / "ckpt" / "inception_v3.ckpt"), "V2")
    (root / "mirror").mkdir()
    pack(prefix, str(root / "mirror" / ARCHIVE))
    model = ki.InceptionV3(weights=prefix, classes=1001, classifier_activation=None)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 299, 299, 3)).astype("float32")
    with full_precision():  # the reference the other backends are held to
        np.savez(root / "reference.npz", images=images, logits=model.predict(images, verbose=0))
    model.save(root / "tf.keras")
    model.save_weights(root / "tf.weights.h5")
    return root


TWO_FAMILIES = "inception_v3 or inception_resnet_v2"  # one plain, one residual: every block kind


@pytest.mark.parametrize(
    "backend, families",
    [
        pytest.param("jax", TWO_FAMILIES, marks=[needs("jax"), pytest.mark.slow], id="jax"),
        pytest.param("torch", "inception_v3", marks=needs("torch"), id="torch"),  # 28 s with both: slow
        pytest.param(
            "torch", "inception_resnet_v2", marks=[needs("torch"), pytest.mark.slow], id="torch-irv2"
        ),
        pytest.param(
            "torch", f"not ({TWO_FAMILIES})", marks=[needs("torch"), pytest.mark.slow], id="torch-others"
        ),
    ],
)
def test_contract_on_backend(backend, families):
    test = os.path.join(ROOT, "tests", "test_contract.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    cmd += ["-k", families]
    done = subprocess.run(cmd, env=backend_env(backend), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_parity_and_fit_on_backend(backend, workdir, tmp_path):
    job = os.path.join(ROOT, "tests", "backend_job.py")
    with serve(str(workdir / "mirror")) as url:
        env = backend_env(backend, ARCHIVE=ARCHIVE, KERAS_HOME=str(tmp_path / "home"))
        env[zoo.URL_ENV] = url
        done = subprocess.run([sys.executable, job, str(workdir)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(backend, results)
    assert results["backend"] == backend
    for kind in ("checkpoint", "archive", "imagenet", "weights.h5", "keras"):
        assert results[kind] < 1e-4, (kind, results[kind])
    assert os.listdir(tmp_path / "home" / "models" / "keras_inception") == ["inception_v3_imagenet.npz"]
    assert all(np.isfinite(results["fit_loss"])) and results["fit_changed"] > 0.9


@pytest.fixture(scope="module")
def training_reference(tmp_path_factory):
    """Initial weights, five fixed batches of 16 and the TensorFlow backend's run on them."""
    import training_job

    root = tmp_path_factory.mktemp("training")
    initial = training_job.prepare(str(root))
    with full_precision():
        return root, initial, training_job.train_steps(str(root))


# float32, five steps of slim's recipe (L2 on kernels and biases, label smoothing, the aux head,
# parameter averages, a learning-rate decay at step 4) from the same weights on the same batches.
# TensorFlow runs TF1's RMSProp kernel, fused BatchNorm and the stem rematerialised; the others
# Keras ops. In float64 (tools/backend_agreement.py) the backends agree to rounding; in float32
# each backend's first step is already ~3e-5 from float64's and the gap grows several-fold a
# step, so five steps leave the weights ~10% of their movement apart (training_job.py's note).
# The tolerances are about 3x what was measured: a wrong loss term (aux weight, smoothing, L2)
# moves the losses by percents; statistics or averages left unmoved, or moved a step late, give
# a gap of order 1 (JAX's moving statistics, frozen by the averages until this round, gave 1.0)
TOLERANCE = {"losses": 5e-3, "weights": 0.3, "statistics": 2e-3, "averages": 0.25}


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_follows_the_tensorflow_backend(backend, training_reference):
    import training_job

    root, initial, reference = training_reference
    job = os.path.join(ROOT, "tests", "training_job.py")
    done = subprocess.run(
        [sys.executable, job, str(root)], env=backend_env(backend), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["warnings"] == [training.TENSORFLOW_ONLY.format(backend)]  # once, for two compiles
    assert "TF1's RMSProp kernel" in results["warnings"][0] and "rematerialisation" in results["warnings"][0]
    with np.load(root / f"{backend}.npz") as f:
        other = {k: f[k] for k in f.files}
    losses = other.pop("losses")
    figures = training_job.agreement(reference, (losses, other), initial)
    print(f"{backend}: losses {losses.tolist()} vs TensorFlow's {reference[0]}; {figures}")
    assert np.all(np.isfinite(losses))  # (nothing moved: a figure is inf or NaN, and fails)
    for kind, tolerance in TOLERANCE.items():
        assert figures[kind] < tolerance, (kind, figures[kind])


AVERAGES_JOB = """
import keras, numpy as np
from keras_inception.train import training
layers = [keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D()]
model = keras.Sequential([keras.Input((8, 8, 3)), *layers, keras.layers.Dense(5, activation="softmax")])
x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
y = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
for compiles in (1, 2):  # a second compile (a new phase) keeps the step that moves them
    training.compile_model(model, training.Recipe.slim(learning_rate=0.001), steps_per_epoch=2)
    optimizer = model.optimizer
    pairs = [(v, a) for v, a in zip(optimizer.averaged_variables, optimizer.averages) if "moving_" in v.path]
    before = [np.array(a.value) for _, a in pairs]
    model.train_on_batch(x, y)
    moved = sum(bool(np.any(np.array(a.value) != b)) for (_, a), b in zip(pairs, before))
    print(compiles, moved, len(pairs))
"""


@needs("jax")
def test_averages_of_batchnorm_statistics_move_on_jax():
    """JAX's step moves the averages of what its optimizer does not train (BatchNorm's moving
    statistics) in the model's step; the stem's rematerialisation once took that step back
    (every average of a statistic stayed at its start: the slow agreement test found it)."""
    done = subprocess.run(
        [sys.executable, "-c", AVERAGES_JOB], env=backend_env("jax"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(int(r[2]) > 0 and r[1] == r[2] for r in rows), rows


# On the other backend: a .keras model written by the TensorFlow backend, its class names, its
# evaluation (tf.data crops, BatchNorm folded), and its class names through runs.save_model (the
# writer of best.keras) and back
EVALUATE_JOB = """
import dataclasses, json, sys
import numpy as np, keras, tensorflow as tf
from keras_inception.train import evaluation, runs
from keras_inception.nn.layers import output_layers

root = sys.argv[1]
model = keras.saving.load_model(root + "/model.keras")
names = output_layers(model)[0].class_names
with np.load(root + "/data.npz") as f:
    data = tf.data.Dataset.from_tensor_slices((f["images"], f["labels"]))
result = evaluation.evaluate([model], data, names, size=32, batch_size=4)
runs.save_model(model, root + "/again.keras")
again = output_layers(keras.saving.load_model(root + "/again.keras"))[0].class_names
results = {"backend": keras.backend.backend(), "names": names, "again": again}
print(json.dumps({**results, "result": dataclasses.asdict(result)}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_and_class_names_on_backend(backend, tmp_path):
    from test_runs import tiny

    from keras_inception.nn.layers import output_layers
    from keras_inception.train import evaluation

    keras.utils.set_random_seed(4)
    model = tiny(classes=6)
    output_layers(model)[0].class_names = ["ant", "bee", "cat", "dog", "eel", "fox"]
    for layer in model.layers:  # statistics away from 0 and 1, so folding them counts
        if hasattr(layer, "moving_variance"):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, "float32"))
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (12, 40, 40, 3), dtype=np.uint8), rng.integers(0, 6, 12)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((images, labels))
    names = output_layers(model)[0].class_names
    expected = evaluation.evaluate([model], data, names, size=32, batch_size=4)
    done = subprocess.run(
        [sys.executable, "-c", EVALUATE_JOB, str(tmp_path)],
        env=backend_env(backend),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["backend"] == backend
    assert results["names"] == results["again"] == names
    result = results["result"]
    assert result["images"] == 12 and 0 < result["top1_error"] < 100
    assert (result["top1_error"], result["top5_error"]) == (expected.top1_error, expected.top5_error)
    assert [tuple(c) for c in result["confused"]] == expected.confused


# SlimRMSprop on JAX with `tensorflow` made unimportable (as tests/test_layout.py blocks it): one
# step of TF1's formula in Keras ops, and the average's first move (decay min(0.9999, 2/11))
OPTIMIZER_WITHOUT_TENSORFLOW = """
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, NoTensorFlow())
import keras, numpy as np
from keras_inception.train.optimizers import SlimRMSprop

variable = keras.Variable(np.ones(2, "float32"))
optimizer = SlimRMSprop(learning_rate=0.1, ema_decay=0.9999)
optimizer.build([variable])
optimizer.track_averages([variable])
optimizer.apply([np.array([0.5, -1.0], "float32")], [variable])
g = np.array([0.5, -1.0])
w = 1.0 - 0.1 * g / np.sqrt(0.9 + 0.1 * g**2 + 1.0)
np.testing.assert_allclose(np.asarray(variable), w, rtol=1e-6)
np.testing.assert_allclose(np.asarray(optimizer.averages[0]), 1.0 - (1 - 2 / 11) * (1.0 - w), rtol=1e-6)
assert all(v is not variable for v in optimizer.variables)  # the model's variable is not its own
print(keras.backend.backend(), sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


@needs("jax")
def test_slim_rmsprop_runs_without_tensorflow():
    done = subprocess.run(
        [sys.executable, "-c", OPTIMIZER_WITHOUT_TENSORFLOW],
        env=backend_env("jax"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "jax []"


@pytest.mark.slow  # JAX compiles the network's step twice (one device, two): minutes on 2 cores
@needs("jax")
def test_data_parallel_on_two_devices_equals_one_device(tmp_path):
    """keras.distribution.DataParallel over two host devices trains as one device on the global batch
    (BatchNorm statistics over the global batch: under GSPMD the ops are global)."""
    job = os.path.join(ROOT, "tests", "distribution_job.py")
    env = backend_env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, job, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(results)
    assert results["devices"] == 2
    np.testing.assert_allclose(results["data_parallel_loss"], results["one_device_loss"], rtol=5e-5)
    # measured: losses 8.4e-7 apart (an earlier jax) and 1.04e-5 (jax 0.10.2, the forward pass's float32
    # reductions in another order); weights 4.9e-4 and 3.4e-4 at most (the first stem kernel, values
    # up to 0.26, as between backends: its gradient sums the most terms, so order shows there first)
    assert results["largest_difference"] < 2e-3, results


@pytest.mark.slow  # 34 s of the default run on the 2-core Xeon; on TensorFlow the same tests run by default
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_killed_and_resumed_on_backend(backend):
    """tests/test_runs.py's kill-and-resume checks on this backend: slim's recipe with averages
    (the resumed run ends with the uninterrupted run's weights and best.keras), and the seeded
    pipeline with Dropout (bit for bit; on PyTorch, Dropout draws from torch's global generator)."""
    test = os.path.join(ROOT, "tests", "test_runs.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test]
    cmd += ["-k", "resumed_run_with_averages or resumed_run_sees_the_batches"]
    done = subprocess.run(cmd, env=backend_env(backend), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout
    assert "{'resumed': 0.0," in done.stdout


def _photos(root) -> str:
    """Two classes of eight JPEGs each, told apart by colour."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for label, colour in (("blue", (30, 30, 200)), ("red", (200, 30, 30))):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(colour, 25, (64, 80, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", "JPEG")
    return str(root)


def _command(backend: str, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """``keras-inception ARGS`` as a user runs it, on ``backend``."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "keras-inception"), *args]
    env = {k: v for k, v in backend_env(backend).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, **popen)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # 43 s; the default run resumes the CLI on TensorFlow and train() on PyTorch, bit-exact
@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_finetune_killed_and_resumed_on_backend(backend, tmp_path):
    """``keras-inception finetune`` on this backend, SIGKILLed in its second phase: the rerun of
    the same command says it resumes in phase 2, keeps the committed epoch and finishes the run.
    (Not bit-equal to an uninterrupted run: slim's augmentation draws from stateful random ops
    in a parallel map, so no two runs see the same crops; tests/test_runs.py holds resumes of
    shuffled data without augmentation to the uninterrupted run.)"""
    import signal
    import time

    from keras_inception.core import startup
    from keras_inception.nn.layers import output_layers
    from keras_inception.train import runs

    data = _photos(tmp_path / "photos")
    cut = str(tmp_path / "cut")
    args = ["finetune", "--data", data, "--model", "inception_v3", "--weights", "none", "--epochs", "1"]
    args += ["--fine-tune-epochs", "1", "--batch-size", "4", "--image-size", "75", "--output", cut]
    job = _command(backend, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while runs.finished_epochs(cut) < 1 and job.poll() is None:  # phase 1 committed: phase 2 runs
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    said = job.communicate()[1]
    assert job.returncode == -signal.SIGKILL, "the run ended before it could be killed in phase 2"
    assert "TensorFlow-only" not in said  # Adam, no rematerialisation: nothing is left out
    assert not [line for line in said.splitlines() if startup.NOTICE.match(line.encode())]
    with open(os.path.join(cut, "state.json")) as f:
        committed = json.load(f)["history"]
    assert [row["epoch"] for row in committed] == [0]
    again = _command(backend, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from epoch 2 of 2 (phase 2)" in again.stderr.splitlines()
    assert "phase 1" not in again.stderr.split("resuming from epoch 2 of 2 (phase 2)")[1]  # not rerun
    with open(os.path.join(cut, "history.json")) as f:
        history = json.load(f)
    assert history["history"]["loss"][0] == committed[0]["loss"] and len(history["history"]["loss"]) == 2
    assert history["best"] == max(history["history"]["val_top1"])
    best = keras.saving.load_model(os.path.join(cut, "best.keras"))
    assert output_layers(best)[0].class_names == ["blue", "red"]
    assert not [f for f in os.listdir(cut) if f.startswith(".partial")]


@pytest.mark.slow  # 30 s on PyTorch: the default run keeps its 10-minute budget on 2 cores
@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_train_then_evaluate_on_backend(backend, tmp_path, capsys):
    """``keras-inception train`` (a reduced IRv1 on a folder) and ``evaluate`` of its model on this
    backend; the TensorFlow backend evaluates the same file to the same table."""
    from keras_inception import cli

    data = _photos(tmp_path / "photos")
    out = str(tmp_path / "run")
    args = ["train", "--data", data, "--model", "inception_resnet_v1", "--epochs", "1", "--batch-size", "4"]
    args += ["--image-size", "75", "--width", "0.25", "--depths", "1", "1", "1", "--output", out]
    done = _command(backend, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    final = os.path.join(out, "final.keras")
    assert done.stdout == f"wrote {final}\n"
    said = done.stderr.splitlines()
    assert "2 classes: blue, red; 16 training images" in said
    assert done.stderr.count(training.TENSORFLOW_ONLY.format(backend)) == 1
    model = keras.saving.load_model(final)  # written on the other backend, read on TensorFlow's
    assert model.output_shape == (None, 2) and model.input_shape == (None, 75, 75, 3)
    evaluate = ["evaluate", "--data", data, "--models", final, "--crops", "1", "12", "--batch-size", "8"]
    done = _command(backend, *evaluate)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli.main(evaluate) == 0
    here = capsys.readouterr().out

    def table(printed: str) -> list[str]:
        return [line for line in printed.splitlines() if line.startswith(("| 1 |", "| 12 |"))]

    assert len(table(here)) == 2 and all("| 16 |" in row for row in table(here))  # 16 images each
    assert table(done.stdout) == table(here)
