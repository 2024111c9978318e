"""The start-up schema check's rule, and the expand/contract declaration of the shipped migrations."""

from __future__ import annotations

import re

from stripemeter.adapters.postgres.migrate import Applied, Migration, available, schema_verdict

SHIPPED = [Migration(1, "counters", "CREATE TABLE a ();"), Migration(2, "ledger", "CREATE TABLE b ();")]
HISTORY = 21  # the migrations before the rule: applied history, never changed


def test_a_database_with_every_shipped_migration_passes() -> None:
    assert schema_verdict(SHIPPED, [Applied(1, "counters"), Applied(2, "ledger")]) == (None, [])


def test_a_database_behind_names_the_expected_and_the_found_migration() -> None:
    why, _ = schema_verdict(SHIPPED, [Applied(1, "counters")])
    assert why is not None
    assert "behind" in why and "needs migration 0002_ledger, found 0001_counters" in why
    assert "stripemeter db migrate" in why
    why, _ = schema_verdict(SHIPPED, [])
    assert why is not None and "found none" in why


def test_newer_expand_migrations_are_accepted_and_listed() -> None:
    applied = [Applied(1, "counters"), Applied(2, "ledger"), Applied(3, "new_table")]
    assert schema_verdict(SHIPPED, applied) == (None, [Applied(3, "new_table")])


def test_a_newer_contract_migration_is_accepted_only_by_the_releases_it_declares() -> None:
    # 0004 drops what releases before 0003 used: this release (ships up to 0002) must not run
    applied = [Applied(1, "counters"), Applied(2, "ledger"), Applied(3, "x"), Applied(4, "drop_y", 3)]
    why, _ahead = schema_verdict(SHIPPED, applied)
    assert why is not None and "ahead" in why
    assert "needs migration 0002_ledger, found 0004_drop_y" in why and "0003 or later" in why
    # a contract migration that declares this release compatible (it stopped using what is dropped)
    compatible = [Applied(1, "counters"), Applied(2, "ledger"), Applied(3, "drop_z", 2)]
    assert schema_verdict(SHIPPED, compatible) == (None, [Applied(3, "drop_z", 2)])


def test_the_oldest_code_declaration_is_read_from_the_migration() -> None:
    sql = "-- Drops the old column.\n-- oldest-code: 0024\nALTER TABLE t DROP COLUMN c;\n"
    assert Migration(25, "drop_c", sql).oldest_code == 24
    assert Migration(23, "add_c", "ALTER TABLE t ADD COLUMN c text;").oldest_code is None


# what an older release may still use: a migration doing any of this is a contract migration
CONTRACTING = re.compile(
    r"\bDROP\s+(COLUMN|TABLE|CONSTRAINT|VIEW|FUNCTION|TYPE)\b|\bRENAME\b|\bALTER\s+COLUMN\s+\S+\s+"
    r"(SET\s+NOT\s+NULL|TYPE)\b|\bADD\s+PRIMARY\s+KEY\b",
    re.IGNORECASE,
)


def test_every_new_migration_that_contracts_the_schema_declares_the_oldest_release_it_runs_with() -> None:
    """Migrations after the history that drop, rename or tighten anything carry ``-- oldest-code``;
    the oldest release is older than the migration itself."""
    for m in available():
        sql = "\n".join(line for line in m.sql.splitlines() if not line.lstrip().startswith("--"))
        if m.version > HISTORY and CONTRACTING.search(sql):
            assert m.oldest_code is not None, f"{m.label} contracts the schema: declare -- oldest-code: NNNN"
        if m.oldest_code is not None:
            assert m.oldest_code < m.version, m.label
