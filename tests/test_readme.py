"""The README and the guides (docs/*.md) say what the code does: every `keras-inception` and
`python tools/...` command in them is one its parser accepts, option for option, every Python
snippet runs, the README's tables are the registry's, setup.cfg's and the built networks', its
install and test commands are the ones `.ci/run` runs, and it stays a README (short, linking
guides that exist). Files the tools generate are not guides: they hold no commands."""

import argparse
import configparser
import glob
import os
import re
import runpy
import shlex
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from slim_kit import pack, random_variables, write_checkpoint

from keras_inception import cli
from keras_inception.core import registry
from keras_inception.models import MODELS, get, multiply_adds
from keras_inception.weights import zoo

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(ROOT, "README.md")
README_LINES = 220  # a README, not the manual: the rest goes into docs/ guides
# Guides the README links that other branches of issue 25 write; the lead empties this at the merge
# (the test below fails once one of them exists, so the list cannot go stale).
PENDING: set[str] = set()
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n$")  # before a block: why it is not run (a reason is due)
GENERATED_BY = re.compile(r"\bby `(python )?tools/\w+\.py", re.I)  # the opening lines of a tool's output


def generated(path: str) -> bool:
    """Whether ``path`` is a report a tool wrote (it says so in its opening lines)."""
    with open(path, encoding="utf-8") as f:
        return bool(GENERATED_BY.search("".join(f.readlines()[:5])))


DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
GUIDES = [README, *(path for path in DOCS if not generated(path))]


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def snippets(path: str) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of ``path``: (line, code, why it is not run or None), in order."""
    text = read(path)
    found = []
    for block in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[: block.start()]
        reason = NOT_RUN.search(before[-400:])
        found.append((before.count("\n") + 1, block[1], reason[1] if reason else None))
    return found


def program(path: str) -> str:
    """The snippets of ``path`` that run, one after the other, as one program."""
    return "\n".join(code for _, code, reason in snippets(path) if reason is None)


def shell_commands(path: str) -> list[list[str]]:
    """Each command of the ```bash blocks of ``path`` as words: continuation lines joined, `&&`
    chains split, comments and ``VAR=value`` prefixes dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", read(path), flags=re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words.pop(0)
            if words:
                commands.append(words)
    return commands


def cli_commands(path: str) -> list[list[str]]:
    return [words[1:] for words in shell_commands(path) if words[0] == "keras-inception"]


def tool_commands(path: str) -> list[list[str]]:
    """``python tools/NAME.py ARGS`` commands as ``[tools/NAME.py, *ARGS]``."""
    return [w[1:] for w in shell_commands(path) if w[0] == "python" and w[1:2] and w[1].startswith("tools/")]


def cases(commands) -> list:
    return [
        pytest.param(path, words, id=f"{os.path.basename(path)}: {' '.join(words)}")
        for path in GUIDES
        for words in commands(path)
    ]


def test_the_readme_shows_every_command():
    used = {words[0] for words in cli_commands(README)}
    assert used == {"convert", "predict", "export", "train", "finetune", "evaluate"}


@pytest.mark.parametrize("path, words", cases(cli_commands))
def test_guide_command_parses(path, words):
    args = cli.parse(words)  # exits on anything the command does not accept
    assert callable(args.func)


class ParsedError(Exception):
    """Raised in place of running a tool once its parser accepted the command line."""


@pytest.mark.parametrize("path, words", cases(tool_commands))
def test_guide_tool_command_parses(path, words, monkeypatch):
    """The tool's own parser accepts the command (the tool is stopped right after parsing)."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise ParsedError(parse_args(self, args, namespace))

    script = os.path.join(ROOT, words[0])
    assert os.path.isfile(script), words[0]
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *words[1:]])
    with mock.patch.dict(os.environ), pytest.raises((ParsedError, SystemExit)) as done:
        runpy.run_path(script, run_name="__main__")
    if done.type is SystemExit:  # --help
        assert done.value.code == 0 and "--help" in words


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
    assert len(run) >= 3, run


def test_the_readme_stays_a_readme():
    lines = read(README).splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines: move the detail into a docs/ guide"


def test_every_guide_the_readme_links_exists():
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", read(README)))
    guides = {os.path.relpath(p, ROOT) for p in GUIDES[1:]}
    assert guides <= links, f"guides the README does not link: {sorted(guides - links)}"
    missing = sorted(link for link in links - PENDING if not os.path.isfile(os.path.join(ROOT, link)))
    assert missing == []
    landed = sorted(link for link in PENDING if os.path.isfile(os.path.join(ROOT, link)))
    assert landed == [], f"{landed} exist now: remove them from PENDING"


def test_guides_link_files_that_exist():
    for path in GUIDES:
        for link in re.findall(r"\]\(([^)#:]+)(?:#[\w-]+)?\)", read(path)):
            target = os.path.normpath(os.path.join(os.path.dirname(path), link))
            if os.path.relpath(target, ROOT) not in PENDING:
                assert os.path.exists(target), f"{os.path.relpath(path, ROOT)} links {link}"


def test_ci_runs_the_readmes_install_and_test_commands():
    """`.ci/run` runs the README's install step (the part before `&&`) and its test command, as
    they are written there."""
    first = re.search(r"```bash\n(.*?)```", read(README), flags=re.S)[1]
    install = next(line.split("&&")[0].strip() for line in first.splitlines() if " pip install " in line)
    test = next(line.split("#")[0].strip() for line in first.splitlines() if " pytest " in line)
    ci = [line.strip() for line in read(os.path.join(ROOT, ".ci", "run")).splitlines()]
    assert install in ci and test in ci


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``header``, as cells."""
    lines = text[text.index(header) :].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return rows[2:end]


def names(cell: str) -> set[str]:
    return {name.strip("` ") for name in cell.split(",") if name.strip("` ")}


def requirement(spec: str) -> str:
    return re.split(r"[<>=!~; \[]", spec.strip(), maxsplit=1)[0]


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return config


def extras() -> dict[str, set[str]]:
    section = setup_cfg()["options.extras_require"]
    return {name: {requirement(s) for s in section[name].split("\n") if s.strip()} for name in section}


def test_the_extras_table_is_setup_cfgs():
    config = setup_cfg()
    base = {requirement(s) for s in config["options"]["install_requires"].split("\n") if s.strip()}
    rows = table(read(README), "| extra | adds |")
    assert [row[0] for row in rows[:1]] == ["(none)"] and names(rows[0][1]) == base
    assert {row[0].strip("`"): names(row[1]) for row in rows[1:]} == extras()


def test_every_dependency_says_why():
    config = setup_cfg()
    every = {requirement(s) for s in config["options"]["install_requires"].split("\n") if s.strip()}
    every |= set().union(*extras().values())
    explained = set().union(*(names(row[0]) for row in table(read(README), "| package | why |")))
    assert explained == every


def test_the_model_table_is_the_registrys():
    rows = {row[0].strip("`"): row for row in table(read(README), "| model | `weights=` | top-1")}
    assert list(rows) == [get(name).__name__ for name in MODELS]
    for name in MODELS:
        _, tags, accuracy, *_ = rows[get(name).__name__]
        published = [p for (family, _), p in registry.PRETRAINED.items() if family == name]
        assert names(tags) == ({p.tag for p in published} or {"none published"})
        imagenet = registry.PRETRAINED.get((name, "imagenet"))
        assert accuracy == (f"{imagenet.top1} / {imagenet.top5}" if imagenet else "-")


def test_the_model_table_holds_inception_resnet_v1s_size():
    """The size columns of the family without public weights (tests/test_models.py checks the
    others' against the reference's counts)."""
    row = next(line for line in read(README).splitlines() if line.startswith("| `InceptionResNetV1` |"))
    model = get("inception_resnet_v1")()
    assert f"| {model.count_params():,} | {multiply_adds(model) / 1e9:.2f} G |" in row


def test_the_weights_guide_lists_the_registry():
    rows = table(read(os.path.join(ROOT, "docs", "weights.md")), "| model | `weights=` | archive")
    listed = {(row[0].strip("`"), row[1].strip("`"), row[2].strip("`")) for row in rows}
    assert listed == {(get(p.family).__name__, p.tag, p.archive) for p in registry.PRETRAINED.values()}


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


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> str:
    """A folder of slim archives for every ``weights="imagenet"`` the guides load (random
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
    images and a small flowers/ image folder, with weights from the mirror (minutes on 2 cores:
    full-size networks, two short fits)."""
    code = program(path)
    for module in re.findall(r"^import (keras_cv|keras_hub|openvino)", code, flags=re.M):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    os.makedirs("keras_inception/resources")
    images = os.path.join("keras_inception", "resources", "images")
    os.symlink(os.path.join(ROOT, images), images)
    rng = np.random.default_rng(0)
    for label in ("daisy", "rose"):
        os.makedirs(f"flowers/{label}")
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 80, 3), np.uint8)).save(f"flowers/{label}/{i}.png")
    exec(compile(code, path, "exec"), {"__name__": "__snippets__"})
