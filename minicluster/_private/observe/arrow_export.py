"""State records as Arrow tables: `minicluster list ... --format parquet|arrow -o FILE`.

Runs in the `minicluster` command's process. A session's task history (every
attempt, with its times, node, worker and error) is a table that one wants to
analyse with pandas, polars or DuckDB rather than read: Parquet keeps it small and
typed; Arrow IPC (Feather v2) maps it zero-copy. Each record's fields become
columns with Arrow types (ints, strings, timestamps in ms as int64); nested values
(resources, events, labels) stay nested (structs and lists), so nothing is lost.
pyarrow is loaded only here, when such a file is asked for.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

FORMATS = ("parquet", "arrow")


def write(records: List[Dict[str, Any]], columns: Sequence[str], path: str, fmt: str) -> int:
    """Write `records` (every one with `columns`, in that order) to `path`; returns the rows written."""
    import pyarrow as pa

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    data = {name: [_plain(record.get(name)) for record in records] for name in columns}
    arrays = {}
    for name, values in data.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Values whose types differ from row to row (a dict with mixed value types):
            # kept as their text rather than refused.
            arrays[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    table = pa.table(arrays) if arrays else pa.table({})
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.feather as feather

        feather.write_feather(table, path)
    return table.num_rows


def _plain(value: Any) -> Any:
    """Empty dicts become None: Arrow cannot make a struct with no fields."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()} or None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
