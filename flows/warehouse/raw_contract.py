"""The raw contract, for every engine: the tables and columns glmm-ab reads from schema ``raw``.

Types are written in DuckDB's names; each engine says which of its own types it accepts for
each (:func:`contract_problems`), so the check and its messages are the same everywhere.
"""
from __future__ import annotations

RAW_DDL = {
    "experiments": "experiment_id VARCHAR, control_variant VARCHAR, start_at TIMESTAMP, end_at TIMESTAMP",
    "metrics": "metric_id VARCHAR, event_name VARCHAR",
    "assignments": "experiment_id VARCHAR, user_id VARCHAR, variant VARCHAR, assigned_at TIMESTAMP",
    "events": "event_id VARCHAR, user_id VARCHAR, event_name VARCHAR, event_at TIMESTAMP",
}

# Optional raw tables: read when present (checked like the others), never created by glmm-ab.
OPTIONAL_RAW_DDL = {
    "variants": "experiment_id VARCHAR, variant VARCHAR, traffic_weight DOUBLE",
    "user_segments": "experiment_id VARCHAR, user_id VARCHAR, dimension VARCHAR, segment VARCHAR",
}

# Optional columns of a contract table: read when present (checked like the others), a default when not.
OPTIONAL_COLUMNS = {
    "metrics": "metric_type VARCHAR, denominator_event VARCHAR, role VARCHAR, tolerated_drop DOUBLE",
}


def _parse(ddl: str) -> dict[str, str]:
    return dict(part.split(" ", 1) for part in ddl.split(", "))


def contract_columns(table: str) -> dict[str, str]:
    """column -> contract type of a raw table."""
    return _parse({**RAW_DDL, **OPTIONAL_RAW_DDL}[table])


def load_columns(table: str, frame_columns) -> dict[str, str]:
    """column -> contract type of a raw table as loaded from a frame: the contract's columns and the
    optional ones the frame has."""
    optional = _parse(OPTIONAL_COLUMNS[table]) if table in OPTIONAL_COLUMNS else {}
    return {**contract_columns(table), **{c: t for c, t in optional.items() if c in frame_columns}}


def contract_problems(found: dict[str, dict[str, str]], accepted: dict[str, tuple[set[str], str]],
                      text_type: str) -> list[str]:
    """What breaks the contract in ``found`` (table -> column -> the engine's type name, upper case):
    missing tables and columns, and columns of a type the models cannot read safely. ``accepted`` maps
    each contract type (VARCHAR, TIMESTAMP, DOUBLE) to the engine's accepted types and how to name them;
    ``text_type`` is the engine's text type (a text timestamp gets a hint: its time zone is not guessed)."""
    problems = []
    for table in [*RAW_DDL, *OPTIONAL_RAW_DDL]:
        if table not in found:
            if table in RAW_DDL:
                problems.append(f"raw.{table} is missing")
            continue
        needed = contract_columns(table)
        missing = [c for c in needed if c not in found[table]]
        if missing:
            problems.append(f"raw.{table} lacks column(s) {', '.join(missing)}")
        optional = _parse(OPTIONAL_COLUMNS[table]) if table in OPTIONAL_COLUMNS else {}
        for column, ddl_type in {**needed, **optional}.items():
            have = found[table].get(column)
            allowed, expected = accepted[ddl_type]
            if have is not None and have not in allowed and not (ddl_type == "DOUBLE" and have.startswith("DECIMAL")):
                hint = (": convert it where the logs land (glmm-ab does not guess the time zone of text timestamps)"
                        if ddl_type == "TIMESTAMP" and have == text_type else "")
                problems.append(f"raw.{table}.{column} is {have}; expected {expected}{hint}")
    return problems
