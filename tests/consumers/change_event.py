#!/usr/bin/env python3
"""Replays strait's `change-event` records the way a MongoDB Kafka connector consumer would.

    python change_event.py INPUT.jsonl OUTPUT.jsonl

INPUT holds one Kafka record value per line, in per-key order: a change event in the
MongoDB Kafka source connector's shape (operationType, documentKey, fullDocument,
updateDescription, ns, ...). Each is parsed by pymongo's `bson.json_util.loads`, the
reference reader, which accepts canonical, relaxed and legacy Extended JSON alike (a
relaxed number cannot say whether it was int32 or int64: it is read as the smallest int
type that holds it, so compare canonical outputs only with canonical inputs). Empty lines
(null values) are skipped.

Events are applied in order to a table keyed by documentKey._id:
  * insert, replace, update with a fullDocument: the key's document becomes fullDocument;
  * update without fullDocument (or with a null one, when the lookup found the document
    gone): updateDescription is applied to the current document (truncatedArrays, then
    removedFields, then updatedFields; dotted paths and array indexes as the server writes
    them); the document must be in the table;
  * delete: the key's document is removed; it must be in the table;
  * drop / dropDatabase: every document is removed (one collection per input assumed);
  * DDL that does not touch documents (create, createIndexes, modify, ...) and invalidate:
    skipped;
  * anything else (rename, an unknown type): an error.
An event that cannot be applied (bad JSON, missing fields, the checks above) makes the exit
status 1 with the line number and reason on stderr: the input is meant to be the complete
stream of one collection, so a gap is a failure, not something to paper over.

OUTPUT has each final document as one line of canonical Extended JSON, sorted by the
canonical Extended JSON text of its _id, so two runs (or a MongoDB dump) compare as text.
"""

import sys

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, DatetimeConversion

# Read dates outside Python's datetime range too (they stay DatetimeMS), and keep them so on
# output, instead of failing on a document that MongoDB accepts.
READ = CANONICAL_JSON_OPTIONS.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
WRITE = CANONICAL_JSON_OPTIONS.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)

SKIPPED_OPS = {
    "create", "createIndexes", "dropIndexes", "modify", "shardCollection",
    "refineCollectionShardKey", "reshardCollection", "invalidate",
}


class Bad(Exception):
    pass


def canon(v):
    return json_util.dumps(v, json_options=WRITE)


def _step(container, part, create):
    """The child `part` of a document or array; with create, missing subdocuments are made."""
    if isinstance(container, list):
        i = int(part)
        if i >= len(container):
            if not create:
                return None
            container.extend([None] * (i + 1 - len(container)))
        if container[i] is None and create:
            container[i] = {}
        return container[i]
    if not isinstance(container, dict):
        raise Bad(f"path goes through a {type(container).__name__} at {part!r}")
    if part not in container:
        if not create:
            return None
        container[part] = {}
    return container[part]


def _parent(doc, path, create):
    parts = path.split(".")
    c = doc
    for p in parts[:-1]:
        c = _step(c, p, create)
        if c is None:
            return None, parts[-1]
    return c, parts[-1]


def set_path(doc, path, value):
    c, last = _parent(doc, path, create=True)
    if isinstance(c, list):
        i = int(last)
        if i >= len(c):
            # The server pads an array set past its end with nulls.
            c.extend([None] * (i + 1 - len(c)))
        c[i] = value
    elif isinstance(c, dict):
        c[last] = value
    else:
        raise Bad(f"cannot set {path!r}: its parent is a {type(c).__name__}")


def unset_path(doc, path):
    c, last = _parent(doc, path, create=False)
    if isinstance(c, list):
        # $unset of an array element leaves a null in its place.
        i = int(last)
        if i < len(c):
            c[i] = None
    elif isinstance(c, dict):
        c.pop(last, None)


def apply_update_description(doc, ud):
    if not isinstance(ud, dict):
        raise Bad("update without fullDocument has no updateDescription")
    for t in ud.get("truncatedArrays") or []:
        c, last = _parent(doc, t["field"], create=False)
        arr = c.get(last) if isinstance(c, dict) else None
        if not isinstance(arr, list):
            raise Bad(f"truncatedArrays names {t['field']!r}, which is not an array")
        del arr[int(t["newSize"]):]
    for path in ud.get("removedFields") or []:
        unset_path(doc, path)
    for path, value in (ud.get("updatedFields") or {}).items():
        set_path(doc, path, value)


def apply(table, ev):
    if not isinstance(ev, dict):
        raise Bad("record value is not a JSON object")
    op = ev.get("operationType")
    if op in SKIPPED_OPS:
        return
    if op in ("drop", "dropDatabase"):
        table.clear()
        return
    if op not in ("insert", "replace", "update", "delete"):
        raise Bad(f"unsupported operationType {op!r}")
    dk = ev.get("documentKey")
    if not isinstance(dk, dict) or "_id" not in dk:
        raise Bad(f"{op} without documentKey._id")
    key = canon(dk["_id"])
    full = ev.get("fullDocument")
    if op == "delete":
        if table.pop(key, None) is None:
            raise Bad(f"delete of _id {key}, which is not in the table")
    elif isinstance(full, dict):
        if canon(full.get("_id")) != key:
            raise Bad(f"fullDocument._id {canon(full.get('_id'))} is not documentKey._id {key}")
        table[key] = full
    elif op == "update":
        if key not in table:
            raise Bad(f"update without fullDocument of _id {key}, which is not in the table")
        apply_update_description(table[key], ev.get("updateDescription"))
    else:
        raise Bad(f"{op} without fullDocument")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    table = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                apply(table, json_util.loads(line, json_options=READ))
            except Exception as e:  # bad JSON, a missing field, a failed check
                print(f"change_event: line {n}: {type(e).__name__}: {e}", file=sys.stderr)
                return 1
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for key in sorted(table):
            out.write(canon(table[key]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
