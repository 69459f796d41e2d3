"""TensorFlow at start-up: imported only by the modules that need it, and quiet in the command.

:func:`import_tensorflow` is how the modules that are TensorFlow's by nature import it:
without TensorFlow, the error names the extra that installs it.

Keep TensorFlow's start-up log lines out of the ``keras-inception`` command's output:
TensorFlow writes its oneDNN, CPU-feature and CUDA-probing notices straight to file
descriptor 2 while it is imported, before ``TF_CPP_MIN_LOG_LEVEL`` is read.
:func:`quiet_tensorflow` drops those notices from what the package's import writes; any
other line still reaches stderr. For the command (not for the library) it also raises
that level to errors only. ``TF_CPP_MIN_LOG_LEVEL=0`` keeps everything.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

COMMAND = "keras-inception"
NOTICE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] |"  # absl/glog lines
    rb"WARNING: All log messages before absl::InitializeLog|"
    rb"To enable the following instructions:)"
)


def import_tensorflow(module: str, purpose: str, extra: str = "tensorflow") -> ModuleType:
    """``tensorflow``, for a module that is TensorFlow's by nature; without it, an error naming the extra.

    The models and their weights need no TensorFlow; ``module`` (``"keras_inception.input.pipelines"``)
    needs it for ``purpose`` (``"tf.data pipelines"``), and the package's ``extra`` brings it.
    """
    try:
        if "tensorflow" in sys.modules:
            return sys.modules["tensorflow"]
        with quiet_tensorflow():  # on JAX and PyTorch, TensorFlow starts here (for tf.data), not with Keras
            return importlib.import_module("tensorflow")
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        raise ModuleNotFoundError(
            f"{module} needs TensorFlow ({purpose}): pip install 'keras-inception[{extra}]'",
            name="tensorflow",
        ) from error


def is_command() -> bool:
    """This process is the ``keras-inception`` command."""
    return os.path.basename(sys.argv[0]) == COMMAND


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Within: TensorFlow's start-up notices written to stderr are dropped (and, for the
    command, its later log lines below errors)."""
    if is_command():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured:
                if not NOTICE.match(line):
                    os.write(2, line)
