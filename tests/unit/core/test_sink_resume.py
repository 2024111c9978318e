"""Where the sink resumes a partition from the offset its database stores and the log's bounds."""

from __future__ import annotations

import pytest

from stripemeter.core.sink_resume import Resume, resume_at


@pytest.mark.parametrize(
    ("stored", "start", "end", "expected"),
    [
        (7, 0, 10, Resume(7, 0, False)),  # within the log: where the database stopped
        (10, 0, 10, Resume(10, 0, False)),  # at the end: nothing to write again
        (0, 0, 0, Resume(0, 0, False)),  # an empty partition
        (3, 3, 10, Resume(3, 0, False)),  # exactly at the log's start: nothing lost
        (2, 5, 10, Resume(5, 3, False)),  # retention removed offsets 2, 3 and 4 before they were written
        (12, 0, 10, Resume(0, 0, True)),  # past the end: another log (a new cluster, a recreated topic)
        (12, 4, 10, Resume(4, 0, True)),
    ],
)
def test_resume_at(stored: int, start: int, end: int, expected: Resume) -> None:
    assert resume_at(stored, start, end) == expected
