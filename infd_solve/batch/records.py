"""Job records on disk: each job's folder, its ``record.json`` written atomically and read back, and whether
the job is finished (resuming: :mod:`infd_solve.batch`)."""

from __future__ import annotations

import json
from pathlib import Path

from .jobs import Job

RECORD = "record.json"


def job_dir(out: str | Path, job: Job) -> Path:
    return Path(out) / "jobs" / job.id


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # absent or half-written: not finished
    return record if isinstance(record, dict) else None


def is_finished(out: str | Path, job: Job, fingerprint: str) -> bool:
    """Whether ``job`` has a complete ``done`` record from the same job line and runner, with every file it
    lists present."""
    folder = job_dir(out, job)
    record = _read_record(folder / RECORD)
    if not record or record.get("status") != "done" or record.get("fingerprint") != fingerprint:
        return False
    written = record.get("written")
    return isinstance(written, list) and all(isinstance(p, str) and (folder / p).is_file() for p in written)


def _write_json(path: Path, obj) -> None:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", encoding="utf-8")
