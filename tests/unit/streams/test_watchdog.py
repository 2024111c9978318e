from __future__ import annotations

from dataclasses import dataclass

from stripemeter.streams.watchdog import RecoveryWatchdog


@dataclass
class FakeRecovery:
    in_recovery: bool = False
    remaining: int = 0

    def active_remaining_total(self) -> int:
        return self.remaining


def test_only_a_recovery_without_progress_is_a_stall() -> None:
    recovery = FakeRecovery()
    dog = RecoveryWatchdog(recovery, stall_seconds=20)
    assert not dog.stalled(now=0)
    recovery.in_recovery, recovery.remaining = True, 100
    assert not dog.stalled(now=1)
    recovery.remaining = 50  # progress resets the clock
    assert not dog.stalled(now=15)
    assert not dog.stalled(now=30)
    assert dog.stalled(now=36)
    recovery.in_recovery = False
    assert not dog.stalled(now=100)
