"""The benchmark's peers (keras.applications, OpenVINO, timm) on a tiny configuration: the ratios table
comes first, a peer that is not installed is named as skipped (speed is never asserted).

timm runs in KERAS_INCEPTION_TORCH_PYTHON when set (a virtualenv with torch, torchvision and
timm, as docs/benchmarking.md makes), else in this Python, where it is named as skipped.
"""

import json
import os
import runpy
import subprocess
import sys

import pytest

TORCH_PYTHON = os.environ.get("KERAS_INCEPTION_TORCH_PYTHON", sys.executable)


def importable(module: str, python: str = sys.executable) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


@pytest.mark.slow  # 76 s of a 2-core default run; the tiny benchmark of test_benchmark.py stays
def test_benchmark_peers_on_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench.md"
    options = "--models inception_v3 --width 0.25 --depths 1 1 1 --image-size 75 --batch-sizes 2 --xla off"
    options += " --precisions float32 mixed_bfloat16 --repeats 2 --peak-sizes 128 --peak-seconds 0.1"
    options += " --skip-deploy --frozen --frozen-towers 1 2 --fuse-pointwise"
    options += " --peers keras.applications openvino timm --train-batch-sizes 2 --train-rounds 2"
    options += " --train-precisions mixed_bfloat16"
    options += f" --sizes --scaling-models --profile-models --torch-python {TORCH_PYTHON}"
    benchmark = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "tools", "benchmark.py"))
    assert benchmark["main"]([*options.split(), "--output", str(out)]) == 0
    text = out.read_text()
    results = json.loads((tmp_path / "bench.json").read_text())
    assert text.index("## Ours against peers") < text.index("## Inference")  # the ratios come first
    assert "Ours are reduced" in text
    ratios = text[text.index("## Ours against peers") : text.index("## Inference")]
    assert "| inception_v3 | 2 | keras.applications float32 | " in ratios
    assert "| inception_v3 | 2 | keras.applications mixed_bfloat16 | " in ratios
    rows = {r["path"]: r for r in results["inference"]}
    assert all(r["min"] <= r["median"] <= r["max"] for r in rows.values())
    assert rows["keras.applications float32"]["peer"] == "keras.applications"
    # the candidate inference forms, each paired with the peers
    for form in ("frozen", "frozen, 2 towers", "1x1-fused"):
        assert rows[f"Keras float32 folded {form}"]["cosine"] > 0.9999
        pair = ("| keras.applications float32 |", f"| Keras float32 folded {form} |")
        assert any(all(p in line for p in pair) for line in ratios.splitlines())
    skipped = "; ".join(results["skipped"])
    assert f"Skipped: {skipped or 'none'}." in text
    if importable("openvino"):
        assert rows["OpenVINO float32"]["cosine"] > 0.9999 and rows["OpenVINO bfloat16"]["cosine"] > 0.99
        assert "| inception_v3 | 2 | OpenVINO float32 | " in ratios
        assert "OpenVINO int8" in rows if importable("nncf") else "OpenVINO int8" in skipped
    else:
        assert "OpenVINO float32/bfloat16/int8" in skipped
    training = results["training"]
    ours = next(r for r in training if r["who"] == "ours")
    assert ours["precision"] == "bfloat16" and ours["rounds"] == 2
    assert 0 < ours["built_rss_gb"] <= ours["peak_rss_gb"]
    if importable("timm", TORCH_PYTHON):  # timm ran in its own process, beside ours
        timm = [rows["timm float32 channels_last"], rows["timm bfloat16 autocast channels_last"]]
        assert all(r["peer"] == "timm" and 0 < r["min"] <= r["max"] for r in timm)
        assert "| inception_v3 | 2 | timm bfloat16 autocast channels_last | " in ratios
        peer = next(r for r in training if r["who"] == "timm")
        assert peer["precision"] == "bfloat16" and peer["rounds"] == 2
        assert 0 < peer["built_rss_gb"] <= peer["peak_rss_gb"]
        assert "| inception_v3 | bfloat16 | 2 | " in text  # the training ratios
    else:
        assert f"timm: not installed in {TORCH_PYTHON}" in skipped


def test_bad_peer_options_are_refused_or_named(tmp_path, capsys):
    benchmark = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "tools", "benchmark.py"))
    with pytest.raises(SystemExit) as exit_:
        benchmark["main"](["--train-rounds", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        benchmark["main"](["--frozen", "--frozen-towers", "2", "0"])
    assert exit_.value.code == 2
    assert "--frozen-towers must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # towers are --frozen's rows: alone they would change nothing
        benchmark["main"](["--frozen-towers", "2"])
    assert exit_.value.code == 2
    assert "--frozen-towers needs --frozen" in capsys.readouterr().err
    missing = str(tmp_path / "no-python")  # a --torch-python that is not there: a reason, not a crash
    assert benchmark["timm_unavailable"](missing).startswith("FileNotFoundError")
    skipped = []
    args = benchmark["parser"]().parse_args(["--torch-python", missing])
    assert not benchmark["timm_ready"](args, "inception_v3", skipped)
    assert skipped[0].startswith(f"timm: not installed in {missing} (FileNotFoundError")
