"""Fingerprints of what a service stores, so tests can assert a rejected call changed nothing.

`postgres_fingerprint` digests every row of every table in the given schemas (ordered, so the
digest only depends on content); `redis_fingerprint` digests every key under a prefix with its
type and value (not its TTL, which moves with the clock). Meant for test-sized data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql


def postgres_fingerprint(dsn: str, schemas: Sequence[str] = ("public",)) -> dict[str, str]:
    """`{schema.table: sha256 of its rows}` for every ordinary table of `schemas`."""
    out: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
            (list(schemas),),
        ).fetchall()
        for schema, table in tables:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {}.{} AS t ORDER BY 1").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchall()
            digest = hashlib.sha256()
            for (text,) in rows:
                digest.update(text.encode())
                digest.update(b"\n")
            out[f"{schema}.{table}"] = digest.hexdigest()
    return out


def redis_fingerprint(client: Any, prefix: str) -> dict[bytes, bytes]:
    """`{key: DUMP of its value}` for every key starting with `prefix` (a sync redis client)."""
    out: dict[bytes, bytes] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}*", count=1000)):
        dumped = client.dump(key)
        if dumped is not None:  # expired between SCAN and DUMP
            out[key] = hashlib.sha256(dumped).digest()
    return out
