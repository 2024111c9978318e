"""Where the PostgreSQL sink resumes a partition, from the offset its database stores and the log's bounds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resume:
    offset: int  # the next record to read
    lost: int  # records retention removed before the sink wrote them (their rows are missing)
    ahead: bool  # the stored offset is past the log's end: the database holds another log's rows


def resume_at(stored: int, log_start: int, log_end: int) -> Resume:
    """Resume at the stored offset while the log holds it; below the log's start what retention removed
    is gone (resume at the start); past the log's end this is not the log the database was written
    from (a new cluster, a recreated topic): resume at the start, and say so."""
    if stored < log_start:
        return Resume(log_start, log_start - stored, False)
    if stored > log_end:
        return Resume(log_start, 0, True)
    return Resume(stored, 0, False)
