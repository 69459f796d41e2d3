"""Every `keras-inception` command in the README is one the CLI accepts, option for option."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from keras_inception import cli

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


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
    assert used == {"convert", "predict", "export", "train", "finetune", "evaluate", "benchmark"}


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


def test_benchmark_help_is_the_tools(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["benchmark", "--help"])
    assert done.value.code == 0
    assert "--peak-sizes" in capsys.readouterr().out  # tools/benchmark.py's own options
