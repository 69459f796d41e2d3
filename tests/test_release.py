"""The release files: the wheel and sdist that ``python -m build`` makes hold every file the package reads."""

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_inception"


def source_files() -> set[str]:
    """Every file of the package in the checkout (modules and ``resources/**``), as paths in a wheel."""
    found = set()
    for folder, dirs, names in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            found.add(os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/"))
    return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and wheel, built once (``--no-isolation``: no download) from a copy of the checkout,
    so that no earlier ``build/`` folder leaks into them and the checkout is left as it is."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*")
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if os.path.isdir(path) and not ignore(ROOT, [name]):
            shutil.copytree(path, source / name, ignore=ignore)
        elif os.path.isfile(path):
            shutil.copy2(path, source / name)
    build = [sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(out)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    wheel, = out.glob("*.whl")
    sdist, = out.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_holds_every_module_and_data_file(dist):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    packaged = {n for n in names if n.startswith(f"{PACKAGE}/")}
    expected = source_files()
    assert any(f.startswith(f"{PACKAGE}/resources/slim_manifests/") for f in expected)
    missing = sorted(expected - packaged)
    assert missing == [], "in the checkout but not in the wheel: list them in setup.cfg's package_data"
    assert sorted(packaged - expected) == []
    assert f"{PACKAGE}-{_version()}.dist-info/licenses/LICENSE" in names


def test_the_sdist_holds_the_package_the_tests_and_the_license(dist):
    _, sdist = dist
    top = sdist.name[: -len(".tar.gz")]
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    assert source_files() <= names
    assert {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "tests/conftest.py", "tools"} <= names
    assert {"docs/api.md", "docs/weights.md", "docs/training.md"} <= names  # the guides the README links


def test_metadata_and_the_extras(dist):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as whl:
        meta = email.message_from_bytes(whl.read(f"{PACKAGE}-{_version()}.dist-info/METADATA"))
    assert meta["Name"] == "keras-inception" and meta["Version"] == _version()
    assert meta["Requires-Python"] == ">=3.10" and meta["License-File"] == "LICENSE"
    assert meta["Description-Content-Type"] == "text/markdown"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert meta.get_payload().strip() == f.read().strip()
    requires = meta.get_all("Requires-Dist")
    base = sorted(r for r in requires if "extra ==" not in r)
    assert base == ["keras>=3.3", "numpy"]  # the models and weights need no TensorFlow
    extras = set(meta.get_all("Provides-Extra"))
    assert {"tensorflow", "jax", "torch", "export", "openvino", "keras-cv", "hub", "test"} <= extras
    for extra in ("tensorflow", "export", "test"):
        assert any(r.startswith("tensorflow>=") and f'extra == "{extra}"' in r for r in requires), extra
    assert not any(r.startswith("tensorflow") and 'extra == "jax"' in r for r in requires)


def test_twine_check_passes(dist):
    run = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASSED") == 2


def _version() -> str:
    import keras_inception

    return keras_inception.__version__
