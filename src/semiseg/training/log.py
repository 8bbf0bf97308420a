"""The training log: ``train_log.csv`` (one row per logging interval) and its loss-curve PNG."""

from __future__ import annotations

import csv
import io
import math
from os import PathLike
from pathlib import Path

from semiseg.files import atomic_path, write_text


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped so the log
    stays continuous (a killed run may have logged past its last checkpoint)."""

    def __init__(self, path: str | PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if int(float(r["step"])) <= resume_step]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
            write_text(self.path, buf.getvalue())
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: dict[str, float]) -> None:
        """Append ``row``; a key not seen before widens the header (the file is rewritten once)."""
        if self.fields is not None and any(k not in self.fields for k in row):
            old = read_log(self.path) if self.path.exists() else []
            self.fields += [k for k in row if k not in self.fields]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(old)
            write_text(self.path, buf.getvalue())
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()


def read_log(path: str | PathLike) -> list[dict[str, float]]:
    """Rows of a CSV log as floats (empty cells become NaN)."""
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(fh)]


def plot_loss_curve(log_path: str | PathLike, out: str | PathLike, title: str = "") -> None:
    """Plot every ``loss*`` column of a training log against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for key in rows[0]:
        if key.startswith("loss"):
            ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
