#!/usr/bin/env python3
"""Reads Kafka record values of Extended JSON documents the way a pymongo consumer would.

    python ext_json_records.py INPUT.jsonl OUTPUT.jsonl

INPUT holds one record value per line (strait's conflict topic, say). Each is parsed by
pymongo's `bson.json_util.loads`, the reference reader, and must be a document; it is written
back to OUTPUT as one line of canonical Extended JSON, in input order. A line pymongo refuses,
or a value that is not a document, makes the exit status 1 with the line number on stderr.
"""

import sys

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, DatetimeConversion

OPTIONS = CANONICAL_JSON_OPTIONS.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def main(src, dst):
    out = []
    with open(src) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                doc = json_util.loads(line, json_options=OPTIONS)
            except Exception as e:  # noqa: BLE001 - any refusal is the finding
                sys.exit(f"line {n}: pymongo cannot read it: {e}")
            if not isinstance(doc, dict):
                sys.exit(f"line {n}: not a document but {type(doc).__name__}")
            out.append(json_util.dumps(doc, json_options=OPTIONS))
    with open(dst, "w") as f:
        f.write("".join(line + "\n" for line in out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
