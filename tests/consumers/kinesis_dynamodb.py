"""Reads a Kinesis stream of DynamoDB changes as other consumers would: boto3, every shard in
lineage order (parents first), each record's images through boto3's TypeDeserializer.

Prints one JSON object: records read, items seen, changes of an item that went back in time
(its `v` lower than an earlier change of the same item), and each item's last `v` (None when
its last change was a delete).

usage: kinesis_dynamodb.py ENDPOINT STREAM
"""
import base64
import json
import sys

import boto3
from boto3.dynamodb.types import TypeDeserializer

endpoint, stream = sys.argv[1], sys.argv[2]
k = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
shards = k.list_shards(StreamName=stream)["Shards"]
by_id = {s["ShardId"]: s for s in shards}
done, order = set(), []
def visit(sid):
    if sid in done or sid not in by_id:
        return
    s = by_id[sid]
    for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")):
        if p:
            visit(p)
    done.add(sid)
    order.append(sid)
for s in shards:
    visit(s["ShardId"])

des = TypeDeserializer()

def wire(v):
    """DynamoDB JSON as botocore's parser hands it over: binaries base64-decoded."""
    (t, x), = v.items()
    if t == "B":
        return {"B": base64.b64decode(x)}
    if t == "BS":
        return {"BS": [base64.b64decode(b) for b in x]}
    if t == "M":
        return {"M": {n: wire(e) for n, e in x.items()}}
    if t == "L":
        return {"L": [wire(e) for e in x]}
    return v

def image(m):
    return {n: des.deserialize(wire(v)) for n, v in m.items()}
last, records, backwards = {}, 0, 0
for sid in order:
    it = k.get_shard_iterator(StreamName=stream, ShardId=sid,
                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    while it:
        r = k.get_records(ShardIterator=it, Limit=1000)
        for rec in r["Records"]:
            change = json.loads(rec["Data"])
            assert change["eventSource"] == "aws:dynamodb", change
            d = change["dynamodb"]
            keys = image(d["Keys"])
            key = f'{keys["pk"]}/{keys["sk"]}'
            new = image(d.get("NewImage", {}))
            old = image(d.get("OldImage", {}))
            v = new.get("v", old.get("v"))
            if v is not None:
                prev = last.get(key, {}).get("max")
                if prev is not None and v < prev:
                    backwards += 1
                last[key] = {"max": max(v, prev or v),
                             "v": int(v) if change["eventName"] != "REMOVE" else None}
            records += 1
        if not r["Records"] and r.get("MillisBehindLatest", 0) == 0:
            break
        it = r.get("NextShardIterator")
print(json.dumps({"records": records, "items": len(last), "backwards": backwards,
                  "last": {key: x["v"] for key, x in last.items()}}))
