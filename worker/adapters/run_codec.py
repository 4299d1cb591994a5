"""The run store's JSON forms: an object's key in a run's records and an outcome's value."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from worker.domain.model import TableOutcome, TableStatus
from worker.domain.sql import ObjectName, TableName, object_name


@functools.lru_cache(maxsize=16_384)  # a batch asks for each object's key several times
def table_key(name: ObjectName) -> str:
    """An object's stable key in a run's records: ``["db", "table"]`` for a table (as always), and
    ``{"stage": "s"}`` / ``{"database": "d"}`` for the other kinds (no table key is an object)."""
    if isinstance(name, TableName):
        return json.dumps([name.database, name.table], ensure_ascii=False)
    return json.dumps({name.kind: name.name}, ensure_ascii=False)


def table_from_key(key: str | bytes) -> ObjectName:
    value = json.loads(key)
    if isinstance(value, dict):
        ((kind, name),) = value.items()
        return object_name(kind, name)
    database, table = value
    return TableName(database, table)


# An outcome's fields after its name, in the dataclass's order (every field is a plain value)
_OUTCOME_FIELDS = tuple(f.name for f in dataclasses.fields(TableOutcome) if f.name != "table")


def outcome_to_json(outcome: TableOutcome) -> str:
    """A table's outcome keeps the shape it always had (``"table": [db, table]``); a stage's or a
    database's names its ``kind`` and ``name`` instead. (Built field by field: dataclasses.asdict
    deep-copies each value and cost three times as much, once per object and write.)"""
    name = outcome.table
    data: dict[str, Any] = (
        {"table": [name.database, name.table]}
        if isinstance(name, TableName)
        else {"kind": name.kind, "name": name.name}
    )
    for field in _OUTCOME_FIELDS:
        data[field] = getattr(outcome, field)
    data["status"] = str(outcome.status)
    return json.dumps(data, ensure_ascii=False)


def outcome_from_json(text: str | bytes) -> TableOutcome:
    data = json.loads(text)
    if "kind" in data:
        data["table"] = object_name(data.pop("kind"), data.pop("name"))
    else:
        data["table"] = TableName(*data["table"])
    data["status"] = TableStatus(data["status"])
    return TableOutcome(**data)
