#!/usr/bin/env python3
"""Reads strait's `debezium` records with Apache Flink's own `debezium-json` format.

    python flink_debezium.py INPUT.jsonl OUTPUT.json [--columns SQL] [--key COL] [--sum COL]

INPUT holds one Kafka record value per line, in per-key order (as read from the topic).
Empty (or blank) lines are tombstones (the null value `tombstones = true` adds after a
delete): this script drops them before Flink sees them. Flink 2.3's `debezium-json` skips an
empty record itself (as its Kafka connector skips a null value), but a tombstone is not
strait's envelope, so the test should not depend on that. Every other line reaches Flink
byte for byte, staged as the only file of a private directory that the `filesystem` table
reads (the connector takes a file or a directory; a directory of our own keeps stray files
out). `ts_ms`, `source` and `transaction` are not read: the filesystem connector exposes no
format metadata (`ingestion-timestamp`, `source.*` are Kafka-connector-only), so only
`before`, `after` and `op` (`c`/`r` insert, `u`, `d`) matter to Flink.

A PyFlink Table API job (streaming mode: batch mode refuses a changelog source; parallelism
1, so the file's order is the changelog's order) reads the lines through a `filesystem`
table with `'format' = 'debezium-json'` and runs two queries:
  * `SELECT * FROM src`: the changelog (+I/-U/+U/-D) is applied here to a dict keyed by
    the primary key, giving the materialized table;
  * `SELECT SUM(qty), COUNT(*) FROM src`: Flink's own running aggregate; its last +I/+U row
    is the final value. Flink retracts with the `before` image, so a `before` that lacks
    fields (e.g. only `_id`) shows up here as a wrong sum while the table still looks right.

OUTPUT is `{"rows": [...sorted by key...], "sum_qty": N, "count": N, "records": N}` (the
aggregate's values are null/0 when the table ends empty; records counts the lines given to
Flink). ARRAY columns become lists, ROW columns objects. Flink reads numbers only from JSON
numbers (or numeric strings), so the sink needs `json = "relaxed"`: a canonical
`{"$numberInt": "5"}` fails the job, and a fraction read into an INT is truncated. On failure (Flink refusing a record, e.g. a `u`/`d` with `before: null`, or a
retraction of a key not in the table) the exit status is 1 and stderr carries the Java
exception's chain of messages.

Runs with the venv of dev/install-consumers.sh (apache-flink 2.3.0, Java 17).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

# The columns the integration test's collection maps to (documents with these fields;
# a missing field reads as NULL, an extra one is ignored). An ObjectId `_id` arrives as a
# JSON object, which Flink puts in a STRING column as its compact JSON text
# (`{"$oid":"65a1..."}`), so the test uses string _ids.
DEFAULT_COLUMNS = (
    "_id STRING, item STRING, qty INT, price DOUBLE, "
    "tags ARRAY<STRING>, dims ROW<h DOUBLE, w DOUBLE>"
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="Debezium JSON values, one a line; empty lines are tombstones")
    p.add_argument("output", help="where the JSON result is written")
    p.add_argument("--columns", default=DEFAULT_COLUMNS,
                   help="SQL column definitions of the source table (default: %(default)s)")
    p.add_argument("--key", default="_id", help="primary key column (default: %(default)s)")
    p.add_argument("--sum", default="qty", help="column summed by the aggregate (default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="leave table.exec.source.cdc-events-duplicate off (Flink trusts every before image)")
    return p.parse_args()


def stage_input(src_path, workdir):
    """Copies the non-blank lines into a new directory as its only file."""
    d = os.path.join(workdir, "src")
    os.mkdir(d)
    kept = 0
    with open(src_path, "rb") as fin, open(os.path.join(d, "part-0.json"), "wb") as fout:
        for line in fin:
            if line.strip():
                fout.write(line if line.endswith(b"\n") else line + b"\n")
                kept += 1
    return d, kept


def plain(v, t):
    """A Flink value of type t as JSON-ready Python. Collected rows carry no field names,
    so ROW values are named from the type; arrays become lists."""
    from pyflink.table.types import ArrayType, RowType
    if v is None:
        return None
    if isinstance(t, RowType):
        return {f.name: plain(x, f.data_type) for f, x in zip(t.fields, v)}
    if isinstance(t, ArrayType):
        return [plain(x, t.element_type) for x in v]
    return v


def collect(env, sql):
    """Runs a query; yields (RowKind, {column: value}) in changelog order."""
    res = env.execute_sql(sql)
    schema = res.get_table_schema()
    names, types = schema.get_field_names(), schema.get_field_data_types()
    with res.collect() as it:
        for r in it:
            yield r.get_row_kind(), {n: plain(v, t) for n, t, v in zip(names, types, r)}


def java_error_chain(e):
    """The messages of a Py4J Java exception and its causes, outermost first (the stack
    traces are left out: the root cause's message is what a test wants to show)."""
    je = getattr(e, "java_exception", None)
    if je is None:
        return [f"{type(e).__name__}: {e}"]
    chain, seen = [], set()
    while je is not None and je.hashCode() not in seen:
        seen.add(je.hashCode())
        chain.append(je.toString())
        je = je.getCause()
    return chain


def main():
    args = parse_args()
    workdir = tempfile.mkdtemp(prefix="strait-flink-")
    try:
        src_dir, kept = stage_input(args.input, workdir)

        from pyflink.common import RowKind
        from pyflink.table import EnvironmentSettings, TableEnvironment

        env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        conf = env.get_config()
        conf.set("parallelism.default", "1")
        # What docs/config.md tells a Flink user to set for strait's (at-least-once) debezium
        # records: Flink keeps the last row per primary key and retracts with it, so a
        # `before` that is only the key (no pre-images, e.g. DocumentDB) and records replayed
        # after a crash still give the right table and aggregates. `--raw` turns it off.
        if not args.raw:
            conf.set("table.exec.source.cdc-events-duplicate", "true")
        # Keep the job's working files out of the caller's directories.
        conf.set("io.tmp.dirs", workdir)
        env.execute_sql(f"""
            CREATE TABLE src ({args.columns}, PRIMARY KEY ({args.key}) NOT ENFORCED)
            WITH ('connector' = 'filesystem', 'path' = 'file://{src_dir}',
                  'format' = 'debezium-json')
        """)

        # The materialized table: +I/+U set the key's row, -U/-D remove it. Retracting a
        # key that is not there means the stream is inconsistent (a lost insert, a
        # reordering): fail rather than hide it.
        rows = {}
        for kind, d in collect(env, "SELECT * FROM src"):
            k = d[args.key]
            if kind in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                rows[k] = d
            elif k in rows:
                del rows[k]
            else:
                raise RuntimeError(f"{kind.name} of {args.key}={k!r}, which is not in the table")

        # Flink's running aggregate: a non-keyed GROUP BY-less aggregate emits +I, then
        # -U/+U pairs (and -D when the table becomes empty); the last row standing is final.
        total = None
        for kind, d in collect(env, f"SELECT SUM({args.sum}) AS s, COUNT(*) AS c FROM src"):
            total = (d["s"], d["c"]) if kind in (RowKind.INSERT, RowKind.UPDATE_AFTER) else None
        s, c = total if total is not None else (None, 0)

        out = {
            "rows": [rows[k] for k in sorted(rows, key=lambda k: (k is None, str(k)))],
            "sum_qty": s,
            "count": c,
            "records": kept,
        }
        with open(args.output, "w") as f:
            # default=str: TIMESTAMP/DECIMAL columns (given with --columns) as text.
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        return 0
    except Exception as e:  # Py4JJavaError from the job, or our own consistency check
        chain = java_error_chain(e)
        # The root cause first (what a test matches on), then the whole chain.
        text = f"flink_debezium: job failed: {chain[-1]}"
        if len(chain) > 1:
            text += "\ncaused by, outermost first:\n" + "\n".join(chain)
        print(text, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
