"""The one table writer and the one plot helper of the package and its tools.

Tables are Markdown (the docs and the CLI print them); plots are PNG files through
matplotlib, an optional dependency (the ``plot`` extra): without it :func:`plot`
says so once and writes nothing.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Sequence

from keras_inception.core import atomic as files


def table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines


@dataclasses.dataclass
class Panel:
    """One set of axes: ``series`` maps a label to its ``(xs, ys)``."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[Sequence[float], Sequence[float]]]
    xscale: str = "linear"


def plot(path: str, panels: Sequence[Panel], panel_width: float = 5.0) -> str | None:
    """Panels side by side as a PNG at ``path`` (written atomically); ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not drawn (pip install 'keras-inception[plot]')")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in panel.series.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel, xscale=panel.xscale)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return files.write_bytes(path, buffer.getvalue())


def write_text(path: str, lines: Iterable[str]) -> str:
    """A report's lines as a text file, written atomically."""
    return files.write_bytes(path, ("\n".join(lines) + "\n").encode())
