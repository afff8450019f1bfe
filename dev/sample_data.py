"""Sample data and a live writer for the quickstart.

    python dev/sample_data.py load URI        # shop.orders (20,000 docs), shop.customers, indexes
    python dev/sample_data.py write URI SECS  # mixed inserts/updates/replaces/deletes/transactions
"""
import datetime
import random
import sys
import time

from bson import Decimal128, ObjectId
from pymongo import MongoClient


def order(i):
    return {
        "_id": i,
        "customer": ObjectId(),
        "placed": datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=i),
        "total": Decimal128(f"{i % 997}.{i % 100:02d}"),
        "items": [{"sku": f"sku-{j}", "qty": j + 1} for j in range(i % 4 + 1)],
        "shipping": {"city": random.choice(["Lyon", "Osaka", "Lima"]), "express": i % 3 == 0},
        "note": "n" * (i % 500),
    }


def load(uri):
    db = MongoClient(uri).shop
    db.orders.drop()
    db.customers.drop()
    for start in range(0, 20000, 2000):
        db.orders.insert_many([order(i) for i in range(start, start + 2000)])
    db.customers.insert_many([{"_id": ObjectId(), "email": f"c{i}@example.com", "tier": i % 3} for i in range(2000)])
    db.orders.create_index([("placed", 1)])
    db.customers.create_index("email", unique=True)
    print("loaded shop.orders (20000) and shop.customers (2000)", file=sys.stderr)


def write(uri, seconds):
    client = MongoClient(uri)
    orders = client.shop.orders
    end = time.time() + seconds
    n = 0
    rnd = random.Random(1)
    while time.time() < end:
        i = rnd.randrange(0, 21000)
        op = rnd.randrange(8)
        try:
            if op == 0:
                orders.insert_one(order(i))
            elif op == 1:
                orders.update_one({"_id": i}, {"$set": {"shipping.express": True, "status": "sent"}})
            elif op == 2:
                orders.update_one({"_id": i}, {"$inc": {"revision": 1}, "$push": {"items": {"sku": "extra", "qty": 1}}})
            elif op == 3:
                orders.update_one({"_id": i}, {"$unset": {"note": ""}, "$pop": {"items": 1}})
            elif op == 4:
                orders.replace_one({"_id": i}, {"_id": i, "replaced": True, "at": datetime.datetime.now(datetime.timezone.utc)})
            elif op == 5:
                orders.delete_one({"_id": i})
            elif op == 6:
                with client.start_session() as s, s.start_transaction():
                    orders.update_one({"_id": i}, {"$set": {"paid": True}}, session=s)
                    client.shop.payments.insert_one({"order": i, "at": datetime.datetime.now(datetime.timezone.utc)}, session=s)
            else:
                orders.update_one({"_id": i}, {"$pull": {"items": {"qty": {"$gt": 2}}}})
        except Exception as e:  # duplicate keys and the like are part of a random workload
            if "duplicate key" not in str(e):
                raise
        n += 1
    print(f"writer: {n} operations in {seconds} s", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(sys.argv[2])
    else:
        write(sys.argv[2], float(sys.argv[3]))
