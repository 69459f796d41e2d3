"""Smoke test of an installed keras-inception (a wheel in a clean virtualenv), run by ``.ci/run``.

Not collected by pytest. Two steps:

    python tests/smoke_installed.py prepare DIR   # in the development environment (TensorFlow)
    python DIR/smoke_installed.py run DIR         # in the clean virtualenv, outside the checkout

``prepare`` writes DIR/mirror/ (a slim-format archive of random Inception-v3 variables under
its official name), DIR/home/ (a Keras home whose cache holds that archive converted) and
DIR/expected.npz (a bundled photo's pixels, its evaluation transform and Inception-v3's
output on it), and copies this script to DIR. ``run`` checks, on the backend that
``KERAS_BACKEND`` names: the import, every builder, the ImageNet helpers, the NumPy evaluation
transform, ``weights="imagenet"`` from the cache and through a 127.0.0.1 mirror, ``.keras``
and ``.weights.h5`` files, the inference form and (where TensorFlow is installed)
``keras-inception predict``. It ends with ``smoke: N passed, M failed, K skipped``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

MODEL = "inception_v3"
PHOTO = "cat.png"


class NotApplicableError(Exception):
    """A check that does not apply here; the message says why."""


def prepare(directory: str) -> None:
    """The mirror, the converted cache and the expected outputs (needs TensorFlow and the checkout)."""
    os.environ["KERAS_HOME"] = os.path.join(directory, "home")
    from slim_kit import pack, random_variables, write_checkpoint

    import keras_inception as ki
    from keras_inception.core import registry
    from keras_inception.input import preprocessing
    from keras_inception.weights import zoo

    entry = registry.pretrained_config(MODEL, "imagenet")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_checkpoint(random_variables(MODEL), os.path.join(tmp, f"{MODEL}.ckpt"))
        os.makedirs(os.path.join(directory, "mirror"), exist_ok=True)
        pack(prefix, os.path.join(directory, "mirror", entry.archive))
    os.environ[zoo.URL_ENV] = os.path.join(directory, "mirror")  # a folder mirror: the cache
    model = ki.InceptionV3(weights="imagenet")
    pixels = preprocessing.load_image(os.path.join(_images(), PHOTO)).numpy()
    x = preprocessing.eval_transform(pixels)[np.newaxis].numpy()
    np.savez(os.path.join(directory, "expected.npz"), pixels=pixels, x=x, y=model.predict(x, verbose=0))
    shutil.copy(__file__, directory)
    print(f"prepared {directory}")


def _images() -> str:
    from importlib import resources

    return str(resources.files("keras_inception").joinpath("resources/images"))


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


def _has(module: str) -> bool:
    """``module`` can be imported (its parent packages too)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@contextlib.contextmanager
def _serve(directory: str):
    """An HTTP server on 127.0.0.1 serving ``directory``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def run(directory: str) -> int:
    """Every check, on the installed package; 0 when none failed."""
    work = tempfile.mkdtemp(prefix="ki-smoke-")
    os.chdir(work)  # outside the checkout: only the installed package can be imported
    os.environ["KERAS_HOME"] = os.path.join(work, "home")
    expected = np.load(os.path.join(directory, "expected.npz"))
    state: dict = {}
    results = {"passed": 0, "failed": 0, "skipped": 0}

    def check(name: str):
        def decorate(fn):
            start = time.perf_counter()
            try:
                fn()
            except NotApplicableError as why:
                results["skipped"] += 1
                print(f"SKIP {name}: {why}", flush=True)
                return fn
            except Exception:
                results["failed"] += 1
                print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)
                return fn
            results["passed"] += 1
            print(f"ok   {name} ({time.perf_counter() - start:.1f} s)", flush=True)
            return fn

        return decorate

    @check("import keras_inception (installed, no TensorFlow unless it is the backend)")
    def _():
        import keras

        import keras_inception as ki

        state["ki"] = ki
        assert "site-packages" in ki.__file__, ki.__file__
        if keras.backend.backend() != "tensorflow":
            assert "tensorflow" not in sys.modules, "importing keras_inception imported tensorflow"
        print(f"     keras_inception {ki.__version__} from {os.path.dirname(ki.__file__)}")
        print(f"     keras {keras.__version__}, backend {keras.backend.backend()}")

    ki = state["ki"]

    @check("every builder (75x75, without and with a 10-class top)")
    def _():
        for name, builder in ki.MODELS.items():
            features = builder(weights=None, include_top=False, pooling="avg", input_shape=(75, 75, 3))
            top = builder(weights=None, classes=10, input_shape=(75, 75, 3))
            assert len(features.output_shape) == 2 and top.output_shape == (None, 10), name
            assert top.count_params() > features.count_params() > 5_000_000, name

    @check("preprocess_input and decode_predictions")
    def _():
        np.testing.assert_allclose(ki.preprocess_input(np.array([0, 127.5, 255])), [-1.0, 0.0, 1.0])
        scores = np.zeros((1, 1001), np.float32)
        scores[0, 282] = 1.0  # slim's column 282 (background first): tabby
        assert ki.decode_predictions(scores, top=1)[0][0] == ("n02123045", "tabby", 1.0)

    @check("NumPy evaluation transform equals the tf.image one of the development environment")
    def _():
        x = ki.eval_transform(expected["pixels"])[np.newaxis]
        np.testing.assert_allclose(x, expected["x"], rtol=0, atol=1e-5)

    def imagenet_model(home: str):
        if os.path.exists(os.environ["KERAS_HOME"]):
            shutil.rmtree(os.environ["KERAS_HOME"])
        if home:
            shutil.copytree(home, os.environ["KERAS_HOME"])
        model = ki.InceptionV3(weights="imagenet")
        y = np.asarray(model.predict(expected["x"], verbose=0))
        np.testing.assert_allclose(y, expected["y"], rtol=1e-3, atol=1e-5)
        return model

    @check('weights="imagenet" from the cache, offline')
    def _():
        os.environ["KERAS_INCEPTION_WEIGHTS_URL"] = "http://127.0.0.1:9/unreachable/"
        state["model"] = imagenet_model(os.path.join(directory, "home"))

    @check('weights="imagenet" downloaded from a 127.0.0.1 mirror and converted')
    def _():
        if not (_has("tensorflow") or _has("keras_inception.weights.tf_checkpoint")):
            reader = "keras_inception.weights.tf_checkpoint"
            raise NotApplicableError(f"no checkpoint reader: neither TensorFlow nor {reader} (issue 23)")
        with _serve(os.path.join(directory, "mirror")) as url:
            os.environ["KERAS_INCEPTION_WEIGHTS_URL"] = url
            imagenet_model("")
        assert os.listdir(os.path.join(os.environ["KERAS_HOME"], "models", "keras_inception")) == [
            f"{MODEL}_imagenet.npz"
        ]

    @check(".keras and .weights.h5 files")
    def _():
        import keras

        model = state["model"]
        model.save("model.keras")
        model.save_weights("model.weights.h5")
        for loaded in (keras.saving.load_model("model.keras"), ki.InceptionV3(weights="model.weights.h5")):
            y = np.asarray(loaded.predict(expected["x"], verbose=0))
            np.testing.assert_allclose(y, expected["y"], rtol=1e-3, atol=1e-5)

    @check("the inference form (BatchNorm folded into the convolutions)")
    def _():
        from keras_inception.deploy import folding as inference

        folded = inference.fold_batchnorm(state["model"])
        assert len(folded.layers) < len(state["model"].layers)
        y = np.asarray(folded.predict(expected["x"], verbose=0))
        np.testing.assert_allclose(y, expected["y"], rtol=1e-3, atol=1e-4)

    @check("without TensorFlow: one-line errors naming what to do")
    def _():
        if _has("tensorflow"):
            raise NotApplicableError("TensorFlow is installed")
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        env["KERAS_HOME"] = tempfile.mkdtemp(dir=work)  # no keras.json: Keras's default backend
        lines = {
            "import keras_inception": "Keras's backend is TensorFlow (its default), which is not installed: "
            "set KERAS_BACKEND=jax or torch, or pip install 'keras-inception[tensorflow]'",
            "import keras_inception.input.pipelines": "keras_inception.input.pipelines needs TensorFlow "
            "(tf.data pipelines): "
            "pip install 'keras-inception[tensorflow]'",
        }
        for code, line in lines.items():
            backend = {} if code == "import keras_inception" else {"KERAS_BACKEND": keras_backend()}
            done = subprocess.run(
                [sys.executable, "-c", code], env={**env, **backend}, capture_output=True, text=True
            )
            assert done.returncode == 1 and done.stderr.splitlines()[-1] == f"ModuleNotFoundError: {line}", (
                done.stderr
            )

    @check("keras-inception predict on the bundled images")
    def _():
        if not _has("tensorflow"):
            raise NotApplicableError("TensorFlow is not installed (the command decodes images with it)")
        command = os.path.join(os.path.dirname(sys.executable), "keras-inception")
        args = [command, "predict", _images(), "--model", MODEL, "--weights", "imagenet", "--top", "2"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        for photo in os.listdir(_images()):
            if not photo.endswith(".md"):
                assert f"{photo}:" in done.stdout, done.stdout

    shutil.rmtree(work, ignore_errors=True)
    print(f"smoke: {results['passed']} passed, {results['failed']} failed, {results['skipped']} skipped")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(f"usage: {sys.argv[0]} prepare|run DIR")
    if sys.argv[1] == "prepare":
        prepare(os.path.abspath(sys.argv[2]))
    else:
        sys.exit(run(os.path.abspath(sys.argv[2])))
