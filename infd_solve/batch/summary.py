"""Summaries: one flat row per job from its record, merged into ``summary.csv`` and ``summary.md``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .jobs import Job
from .records import RECORD, _read_record, job_dir


def _mean(values) -> float | None:
    values = [v for v in (values if isinstance(values, list) else [values]) if isinstance(v, (int, float))]
    return float(np.mean(values)) if values else None


def summary_row(job: Job, record: dict | None) -> dict:
    """One flat row of a job's record: settings, status, seconds, metrics and report measures (means over
    the job's samples), the unrefined sample's prefixed ``unrefined``."""
    row: dict[str, Any] = {"id": job.id, "line": job.line, "kind": job.kind, "task": job.task or "",
                           "method": job.method}
    if record is None:
        return row | {"status": "missing"}
    row |= {"seed": record.get("settings", {}).get("seed", job.spec.get("seed", 0)), "status": record.get("status"),
            "seconds": _mean(record.get("seconds", {}).get("total"))}
    for prefix, part in (("", record), ("unrefined ", record.get("unrefined") or {})):
        for name, value in (part.get("metrics") or {}).items():
            row[f"{prefix}{name}"] = _mean(value)
        for constraint, measures in (part.get("report") or {}).items():
            for measure, value in measures.items():
                row[f"{prefix}{constraint} {measure}"] = _mean(value)
    never = {k: v for k, v in (record.get("never_guided") or {}).items() if v}
    if never:
        row["never guided"] = "; ".join(f"{k} {v}" for k, v in never.items())
    if record.get("error"):
        row["error"] = record["error"]
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def merge_summary(jobs: Sequence[Job], out: str | Path, write: bool = True) -> list[dict]:
    """Rows of every job's record (:func:`summary_row`, file order); with ``write``, ``OUT/summary.csv``
    and ``OUT/summary.md`` (atomically)."""
    from ..io import atomic_path

    rows = [summary_row(job, _read_record(job_dir(out, job) / RECORD)) for job in jobs]
    if write:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
        with atomic_path(Path(out) / "summary.csv") as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        counts = {s: sum(r.get("status") == s for r in rows) for s in ("done", "failed", "missing")}
        lines = [f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), "",
                 "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
        with atomic_path(Path(out) / "summary.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows
