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
        pytest.param("torch", TWO_FAMILIES, marks=needs("torch"), id="torch"),
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
    """Initial weights, two fixed batches of 16 and the TensorFlow backend's run on them."""
    import training_job

    root = tmp_path_factory.mktemp("training")
    keras.utils.set_random_seed(1)
    training_job.build().save_weights(root / "initial.weights.h5")
    rng = np.random.default_rng(1)
    size, count = training_job.SIZE, training_job.BATCH * training_job.STEPS
    x = rng.uniform(-1, 1, (count, size, size, 3)).astype("float32")
    np.savez(root / "batches.npz", x=x, y=np.eye(3, dtype="float32")[rng.integers(0, 3, count)])
    with full_precision():
        losses, variables = training_job.train_steps(str(root))
    return root, losses, variables


# float32, two steps of slim's recipe from the same weights on the same batches (TensorFlow: TF1's
# RMSProp kernel, fused BatchNorm, the stem rematerialised; elsewhere Keras ops). Measured on torch:
# losses 4.1e-5 apart, weights 2.0e-3 at most (the stem's kernels, values up to 0.26)
LOSS_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 5e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_follows_the_tensorflow_backend(backend, training_reference):
    root, losses, variables = training_reference
    job = os.path.join(ROOT, "tests", "training_job.py")
    env = backend_env(backend)
    done = subprocess.run([sys.executable, job, str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["warnings"] == [training.TENSORFLOW_ONLY.format(backend)]  # once, for two compiles
    assert "TF1's RMSProp kernel" in results["warnings"][0] and "rematerialisation" in results["warnings"][0]
    with np.load(root / f"{backend}.npz") as f:
        other = {k: f[k] for k in f.files}
    other_losses = other.pop("losses")
    loss_gap = float(np.max(np.abs(other_losses - losses) / np.abs(losses)))
    assert other.keys() == variables.keys()
    differences = {k: float(np.max(np.abs(variables[k] - other[k]))) for k in variables}
    worst = max(differences, key=differences.get)
    print(
        f"{backend}: losses {other_losses.tolist()} vs TensorFlow's {losses} (largest relative gap "
        f"{loss_gap:.1e}); weights, statistics and averages at most {differences[worst]:.1e} apart ({worst})"
    )
    assert losses[-1] < losses[0]  # it trains
    assert loss_gap < LOSS_TOLERANCE
    assert differences[worst] < WEIGHT_TOLERANCE, (worst, differences[worst])


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
    np.testing.assert_allclose(results["data_parallel_loss"], results["one_device_loss"], rtol=1e-5)
    # measured: losses 8.4e-7 apart, weights 4.9e-4 at most (the first stem kernel, values up to 0.26,
    # as between backends: its gradient sums the most terms, so reduction order shows there first)
    assert results["largest_difference"] < 2e-3, results


@pytest.mark.slow  # 27 s on torch; the loss-curve parity above keeps torch in the default run
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_killed_and_resumed_on_backend(backend):
    """tests/test_runs.py's kill-and-resume check (slim's recipe with averages, tf.data input) on
    this backend: the resumed run ends with the uninterrupted run's weights and best.keras."""
    test = os.path.join(ROOT, "tests", "test_runs.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    cmd += ["-k", "resumed_run_with_averages"]
    done = subprocess.run(cmd, env=backend_env(backend), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout
