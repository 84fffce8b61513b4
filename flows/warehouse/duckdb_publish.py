"""Publishing the results for BI: a read-only DuckDB copy and Parquet files.

A DuckDB file has one writer or many readers, so a BI client holding the nightly
warehouse open would make the next run fail with a lock error. BI therefore
reads a *published copy*, rebuilt after every successful run:

* ``<warehouse stem>_bi.duckdb`` (path configurable): the marts (``fct_*``,
  ``dq_*``), the report models (``rpt_*``) and every ``glmm.*`` table, as plain
  tables (dbt-duckdb views name their catalog, which a copy would break). It is
  written with storage version v1.0.0, so DuckDB 1.x clients — the ones most BI
  tools bundle — open it. It is built aside and renamed over the old file, so a
  reader sees the old file or the new one, never half of one; a reader holding
  the old file open keeps reading it (the rename does not touch its inode) and
  never blocks the publish.
* ``<warehouse stem>_bi_parquet/<schema>/<table>.parquet``: the same tables, each
  file replaced atomically, and ``_publication.json`` naming the run last.

Each copy carries ``main.bi_publication`` (one row): the run it holds and when.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import duckdb

from ..clock import utc_now
from . import Publication, PublishError

STORAGE_VERSION = "v1.0.0"
PUBLISHED_PREFIXES = ("fct_", "dq_", "rpt_")
UNPUBLISHED = ("publications",)  # glmm.* bookkeeping that stays in the warehouse
# One row per experiment x metric x user: by far the largest table (20M rows on a 10 x 2 x 1M night) and
# not what BI reads (the histogram and the reports are); copied only when asked (--publish-per-user). In
# the warehouse it is a view (over the incremental int_user_metric_counts); the copy is a table.
PER_USER = ("fct_user_cv_counts",)


def default_bi_path(warehouse: str | Path) -> Path:
    warehouse = Path(warehouse)
    return warehouse.with_name(f"{warehouse.stem}_bi.duckdb")


def default_parquet_dir(bi_path: str | Path) -> Path:
    bi_path = Path(bi_path)
    return bi_path.with_name(f"{bi_path.stem}_parquet")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def published_tables(con, catalog: str, per_user: bool = False) -> list[tuple[str, str]]:
    """(schema, table) of every table to publish from ``catalog``: the marts, the reports and the glmm
    result tables, not the warehouse's own bookkeeping of its publications (the copy has bi_publication),
    nor the per-user table unless ``per_user``."""
    rows = con.execute(
        """
        SELECT table_schema, table_name FROM information_schema.tables
        WHERE table_catalog = ? AND (table_type = 'BASE TABLE' OR (table_schema = 'main' AND table_name IN (""" + ", ".join("?" for _ in PER_USER) + """)))
          AND ((table_schema = 'glmm' AND table_name NOT IN (""" + ", ".join("?" for _ in UNPUBLISHED) + """))
               OR (table_schema = 'main' AND (""" + " OR ".join("starts_with(table_name, ?)" for _ in PUBLISHED_PREFIXES) + """)))
        ORDER BY table_schema, table_name
        """,
        [catalog, *PER_USER, *UNPUBLISHED, *PUBLISHED_PREFIXES],
    ).fetchall()
    return [(schema, table) for schema, table in rows if per_user or not is_per_user(schema, table)]


def is_per_user(schema: str, table: str) -> bool:
    return schema == "main" and table in PER_USER


def publish(warehouse: str | Path, run_id: str, bi_path: str | Path | None = None,
            parquet_dir: str | Path | None = None, parquet: bool = True, source: str | None = None,
            per_user: bool = False) -> Publication:
    """Copy the results of ``warehouse`` to the BI file (and Parquet), atomically per file. ``source``: the
    warehouse the copy names (default ``warehouse`` itself; another engine's exports name their own).
    Without ``per_user``, an earlier copy's per-user Parquet file goes too."""
    started = time.perf_counter()
    warehouse = Path(warehouse)
    bi_path = Path(bi_path) if bi_path else default_bi_path(warehouse)
    if bi_path.resolve() == warehouse.resolve():
        raise PublishError(f"the BI copy {bi_path} cannot be the warehouse itself")
    parquet_dir = (Path(parquet_dir) if parquet_dir else default_parquet_dir(bi_path)) if parquet else None
    try:  # every folder first: a bad path fails here, before anything is replaced
        bi_path.parent.mkdir(parents=True, exist_ok=True)
        if parquet_dir is not None:
            parquet_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PublishError(f"cannot create the folders of the BI copy ({bi_path}, {parquet_dir}): {exc}") from exc
    tmp = bi_path.with_name(f".{bi_path.name}.{run_id}.tmp")
    staging = bi_path.with_name(f".{bi_path.stem}_parquet.{run_id}.tmp")
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    publication = Publication(bi_path=bi_path, parquet_dir=parquet_dir, run_id=run_id)
    published_at = utc_now()
    try:
        con = duckdb.connect()
        try:
            # under the catalog name its views use (dbt-duckdb names it after the file: fct_user_cv_counts is one)
            wh = _ident(warehouse.stem)
            bi = "bi" if warehouse.stem != "bi" else "bi_copy"
            con.execute(f"ATTACH {_literal(str(warehouse))} AS {wh} (READ_ONLY)")
            con.execute(f"ATTACH {_literal(str(tmp))} AS {bi} (STORAGE_VERSION {_literal(STORAGE_VERSION)})")
            tables = published_tables(con, warehouse.stem, per_user)
            if not tables:
                raise PublishError(f"{warehouse} has no result tables to publish")
            con.execute("BEGIN TRANSACTION")
            for schema, table in tables:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {bi}.{_ident(schema)}")
                con.execute(f"CREATE TABLE {bi}.{_ident(schema)}.{_ident(table)} AS "
                            f"SELECT * FROM {wh}.{_ident(schema)}.{_ident(table)}")
                publication.rows[f"{schema}.{table}"] = con.execute(
                    f"SELECT count(*) FROM {bi}.{_ident(schema)}.{_ident(table)}").fetchone()[0]
            con.execute(f"CREATE TABLE {bi}.main.bi_publication (run_id VARCHAR NOT NULL, published_at TIMESTAMP NOT NULL, "
                        "source_warehouse VARCHAR NOT NULL, tables VARCHAR[] NOT NULL)")
            con.execute(f"INSERT INTO {bi}.main.bi_publication VALUES (?, ?, ?, ?)",
                        [run_id, published_at, source or str(warehouse.resolve()), list(publication.rows)])
            con.execute("COMMIT")
            if parquet_dir is not None:
                for schema, table in [*tables, ("main", "bi_publication")]:
                    (staging / schema).mkdir(parents=True, exist_ok=True)
                    target = staging / schema / f"{table}.parquet"
                    con.execute(f"COPY {bi}.{_ident(schema)}.{_ident(table)} TO {_literal(str(target))} (FORMAT parquet)")
            con.execute(f"DETACH {bi}")
        finally:
            con.close()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # A stale write-ahead log beside the target would be replayed onto the new file.
        Path(f"{bi_path}.wal").unlink(missing_ok=True)
        os.replace(tmp, bi_path)
        if parquet_dir is not None:
            for source in sorted(staging.rglob("*.parquet")):
                target = parquet_dir / source.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            if not per_user:  # an earlier copy's per-user rows would be stale beside this copy
                for table in PER_USER:
                    (parquet_dir / "main" / f"{table}.parquet").unlink(missing_ok=True)
            manifest = {"run_id": run_id, "published_at": published_at.isoformat(), "rows": publication.rows}
            tmp_manifest = parquet_dir / f"._publication.{run_id}.json"
            tmp_manifest.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp_manifest, parquet_dir / "_publication.json")
    except PublishError:
        raise
    except (duckdb.Error, OSError) as exc:
        raise PublishError(f"publishing {warehouse} to {bi_path} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    publication.seconds = time.perf_counter() - started
    return publication


def publish_tables(tables: dict, run_id: str, bi_path: str | Path, parquet_dir: str | Path | None,
                   source: str, per_user: bool = False) -> Publication:
    """The BI copy of another engine's tables: ``tables`` maps (schema, table) to a function returning its
    rows (anything DuckDB scans: a pandas or Arrow frame). They are written to a DuckDB file aside,
    which :func:`publish` then copies as it copies a DuckDB warehouse; the copy names ``source``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="glmm-ab-export-") as tmp:
        export = Path(tmp) / "export.duckdb"
        try:
            con = duckdb.connect(str(export))
            try:
                for (schema, table), read in tables.items():
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
                    con.register("exported_rows", read())
                    con.execute(f"CREATE TABLE {_ident(schema)}.{_ident(table)} AS SELECT * FROM exported_rows")
                    con.unregister("exported_rows")
            finally:
                con.close()
        except duckdb.Error as exc:
            raise PublishError(f"exporting {source} for BI failed: {exc}") from exc
        return publish(export, run_id, bi_path, parquet_dir, source=source, per_user=per_user)
