"""Small helpers for the DuckDB SQL Tessera writes over its Parquet files."""

from __future__ import annotations

from collections.abc import Sequence


def quote(name: str) -> str:
    """A SQL identifier, quoted: ``user id`` → ``"user id"``."""
    return '"' + name.replace('"', '""') + '"'


def file_list(files: Sequence[str]) -> str:
    """A DuckDB list literal of file paths for ``read_parquet``."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
