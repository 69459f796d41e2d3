"""Slim checkpoint -> Keras model file: read by name, checked, written atomically.

result = convert("inception_v4.ckpt", "inception_v4.keras")   # or .weights.h5, or a SavedModel folder
print(result.summary())
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_inception import models
from keras_inception.core import registry
from keras_inception.core.precision import full_precision
from keras_inception.deploy import export
from keras_inception.weights import sources
from keras_inception.weights.loading import LoadReport


@dataclasses.dataclass
class ConversionResult:
    """What :func:`convert` read, used and wrote."""

    family: str
    source: str
    output: str
    report: LoadReport
    classes: int
    aux_logits: bool
    finite: bool  # the model's output on a random input is finite

    @property
    def all_used(self) -> bool:
        return self.report.used + len(self.report.skipped_heads) == self.report.total

    def summary(self) -> str:
        report = self.report
        lines = [
            f"converted {self.family} from {self.source}",
            f"  {report.used} of {report.total} slim variables -> {report.assigned} Keras weights"
            f" ({self.classes} classes{', aux head' if self.aux_logits else ''}"
            f"{', moving averages' if report.ema else ''})",
        ]
        if report.ignored:
            lines.append(
                f"  ignored (state of the training run): {len(report.ignored)} variables, "
                f"e.g. {report.ignored[0]}"
            )
        if report.skipped_heads:
            heads = sorted({n.split("/")[1] for n in report.skipped_heads})
            count = len(report.skipped_heads)
            lines.append(f"  not converted (head not built): {count} variables of {heads}")
        lines.append(
            f"  check: output finite {'yes' if self.finite else 'NO'}; "
            f"every variable used {'yes' if self.all_used else 'NO'}"
        )
        lines.append(f"wrote {self.output}" if self.output else "nothing written")
        return "\n".join(lines)


def convert(
    source: str,
    output: str | None = None,
    *,
    family: str | None = None,
    classes: int = 1000,
    aux_logits: bool = False,
    use_ema: bool = True,
    version: int | None = None,
) -> ConversionResult:
    """Convert a slim checkpoint, official archive or tag (with ``family``) to ``output``.

    ``output`` is ``FILE.keras``, ``FILE.weights.h5`` or a SavedModel folder
    (TF Serving's ``<folder>/<version>``); default ``saved_models/<family>``. Nothing
    is written unless the output is finite and every checkpoint variable was used.
    """
    if classes not in (1000, 1001):
        raise ValueError(f"classes must be 1000 (background dropped) or 1001, got {classes}")
    if output is not None:
        export.output_kind(output)  # refuse an unknown suffix before any work
    resolved = sources.resolve(source, family)
    model, report = models.from_checkpoint(resolved, family, use_ema, classes=classes, aux_logits=aux_logits)
    name = report.family
    size = registry.family(name).default_size
    probe = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype("float32")
    with full_precision():  # float32 at full precision on a GPU too (TF32 off)
        outputs = model.predict(probe, verbose=0)
    finite = all(np.isfinite(o).all() for o in (outputs if isinstance(outputs, list) else [outputs]))
    result = ConversionResult(name, source, "", report, classes, aux_logits, finite)
    if finite and result.all_used:
        result.output = export.save(model, output or export.default_output(name), version)
    return result
