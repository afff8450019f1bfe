#!/usr/bin/env python3
"""Reads strait's `document` records as an upsert stream (a compacted topic's consumer).

    python document_upsert.py INPUT.jsonl OUTPUT.jsonl

INPUT holds one Kafka record a line, in per-key order, as a plain JSON object
`{"key": <the record key as text, or null>, "value": <the record value as text, or null>}`
(the raw bytes, UTF-8 decoded, so this script sees exactly what strait wrote). The key is
strait's `document` key, the documentKey (`{"_id": ...}`); the value is the document.

Key and value are parsed by pymongo's `bson.json_util.loads`, which accepts canonical,
relaxed and legacy Extended JSON (and so plain JSON). A relaxed number cannot say whether it
was int32 or int64: it is read as the smallest int type that holds it, so compare canonical
outputs only with canonical inputs.

Records are applied in order, keyed by _id:
  * a null value is a tombstone: the key's document is removed (a no-op when absent, as in
    any upsert consumer); a tombstone needs a key with an _id;
  * otherwise the value replaces the key's document (insert if absent); its _id must equal
    the key's _id when there is a key (a record without key is keyed by the value's _id).
A record that cannot be applied (bad JSON, no _id, key/value disagreeing) makes the exit
status 1 with the line number and reason on stderr.

OUTPUT has each final document as one line of canonical Extended JSON, sorted by the
canonical Extended JSON text of its _id (the same output as change_event.py).
"""

import json
import sys

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, DatetimeConversion

# Dates outside Python's datetime range are kept (as DatetimeMS) instead of failing.
OPTS = CANONICAL_JSON_OPTIONS.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class Bad(Exception):
    pass


def canon(v):
    return json_util.dumps(v, json_options=OPTS)


def id_of(text, what):
    doc = json_util.loads(text, json_options=OPTS)
    if not isinstance(doc, dict) or "_id" not in doc:
        raise Bad(f"record {what} has no _id: {text}")
    return doc, canon(doc["_id"])


def apply(table, rec):
    if not isinstance(rec, dict) or not {"key", "value"} <= rec.keys():
        raise Bad('line is not {"key": ..., "value": ...}')
    key_id = id_of(rec["key"], "key")[1] if rec["key"] is not None else None
    if rec["value"] is None:
        if key_id is None:
            raise Bad("tombstone without a key")
        table.pop(key_id, None)
        return
    doc, doc_id = id_of(rec["value"], "value")
    if key_id is not None and key_id != doc_id:
        raise Bad(f"value _id {doc_id} is not the key's _id {key_id}")
    table[doc_id] = doc


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
                apply(table, json.loads(line))
            except Exception as e:  # bad JSON, a missing field, a failed check
                print(f"document_upsert: line {n}: {type(e).__name__}: {e}", file=sys.stderr)
                return 1
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for key in sorted(table):
            out.write(canon(table[key]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
