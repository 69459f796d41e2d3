"""Every `keras-inception` command in the README is one the CLI accepts, option for option, and
every Python snippet of the README and the guides (docs/*.md) runs."""

import glob
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from slim_kit import pack, random_variables, write_checkpoint

from keras_inception import cli
from keras_inception.core import registry
from keras_inception.weights import zoo

ROOT = os.path.join(os.path.dirname(__file__), "..")
README = os.path.join(ROOT, "README.md")
GUIDES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n$")  # before a block: why it is not run (a reason is due)


def snippets(path: str) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of ``path``: (line, code, why it is not run or None), in order."""
    with open(path) as f:
        text = f.read()
    found = []
    for block in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[: block.start()]
        reason = NOT_RUN.search(before[-400:])
        found.append((before.count("\n") + 1, block[1], reason[1] if reason else None))
    return found


def program(path: str) -> str:
    """The snippets of ``path`` that run, one after the other, as one program."""
    return "\n".join(code for _, code, reason in snippets(path) if reason is None)


def readme_commands() -> list[str]:
    with open(README) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part.split("  #")[0], comments=True)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words[:1] == ["keras-inception"]:
                commands.append(words[1:])
    return commands


def test_the_readme_shows_every_command():
    used = {words[0] for words in readme_commands()}
    assert used == {"convert", "predict", "export", "train", "finetune", "evaluate"}


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_readme_command_parses(words):
    args = cli.parse(words)  # exits on anything the command does not accept
    assert callable(args.func)


def test_the_command_prints_no_tensorflow_start_up_lines(tmp_path):
    command = os.path.join(os.path.dirname(sys.executable), "keras-inception")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [command, "convert", str(tmp_path / "none.ckpt"), str(tmp_path / "x.keras")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"keras-inception convert: error: no weights at {tmp_path / 'none.ckpt'} (neither a .keras / "
        f".weights.h5 file, an archive, a V1 checkpoint nor a V2 prefix with {tmp_path / 'none.ckpt'}.index)"
    ]


@pytest.mark.parametrize("path", GUIDES, ids=os.path.basename)
def test_snippets_use_only_what_they_define(path):
    """Each guide's snippets, read as one program, define every name they use (ruff's F821)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F821", "--stdin-filename", "snippets.py", "-"],
        input=program(path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
    assert all(reason.strip() for _, _, reason in snippets(path) if reason is not None)


def test_the_readme_has_snippets_that_run():
    run = [line for line, _, reason in snippets(README) if reason is None]
    assert len(run) >= 8, run


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> str:
    """A folder of slim archives for every ``weights="imagenet"`` the README loads (random
    variables of the published shapes), as the weights mirror, with a fresh cache."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for family in ("inception_v3", "inception_v4", "inception_resnet_v2"):
        prefix = write_checkpoint(random_variables(family), str(tmp_path / family / f"{family}.ckpt"))
        pack(prefix, str(folder / registry.pretrained_config(family, "imagenet").archive))
    monkeypatch.setenv(zoo.URL_ENV, str(folder))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in GUIDES if program(p)], ids=os.path.basename)
def test_snippets_run(path, mirror, tmp_path, monkeypatch):
    """Each guide's snippets run in order in one namespace, in a folder holding the package's
    images and a small flowers/ image folder, with weights from the mirror (about 4 min on 2
    cores: full-size networks, two short fits)."""
    code = program(path)
    for module in re.findall(r"^import (keras_cv|keras_hub|openvino)", code, flags=re.M):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    os.makedirs("keras_inception/data")
    os.symlink(os.path.join(ROOT, "keras_inception", "resources", "images"), "keras_inception/data/images")
    rng = np.random.default_rng(0)
    for label in ("daisy", "rose"):
        os.makedirs(f"flowers/{label}")
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 80, 3), np.uint8)).save(f"flowers/{label}/{i}.png")
    exec(compile(code, path, "exec"), {"__name__": "__snippets__"})
