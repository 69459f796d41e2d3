"""tools/train_profile.py on a tiny network: memory rows in order, ops by phase, files written."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train_profile.py")


def test_profiles_a_training_step(tmp_path):
    out = tmp_path / "profile.md"
    options = "inception_resnet_v2 --batch 2 --precision float32 --image-size 75 --width 0.25 --depths 1 1 1"
    cmd = [sys.executable, TOOL, *options.split(), "--steps", "2", "--top", "7", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "profile.json").read_text())
    rss, tensors = result["rss_gb"], result["tensors_gb"]
    assert 0 < rss["import"] < rss["built"] <= rss["peak"] and rss["first step"] <= rss["peak"]
    assert 0 < tensors["current"] <= tensors["peak"] < rss["peak"]
    ops = {(o["phase"], o["op"]): o for o in result["ops"]}
    assert {"forward", "backward"} <= {phase for phase, _ in ops}
    # the residual up-projections (1x1) train as matmuls, the 3x3 convolutions as convolutions
    matmul = [
        o for o in result["ops"] if o["phase"] == "backward" and "MatMul" in o["op"] and o["kernel"] == "1x1"
    ]
    filters = [o for o in result["ops"] if "Conv2DBackpropFilter" in o["op"] and o["kernel"] == "3x3"]
    assert matmul and filters and all(o["calls"] > 0 for o in matmul + filters)
    assert abs(sum(o["share"] for o in result["ops"]) - 1) < 1e-6
    text = out.read_text()
    assert text.startswith("# Training step profile: inception_resnet_v2, float32, batch 2")
    assert text.count("| backward |") + text.count("| forward |") + text.count("| rest |") >= 7


def test_bad_options_are_refused():
    done = subprocess.run(
        [sys.executable, TOOL, "inception_v3", "--batch", "0"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "must be at least 1" in done.stderr
