"""Decodes the wire contract's test vectors with kbridge_wire and checks each against its meaning.

    python3 decode_vectors.py [VECTORS.json] [--json]

Prints one line per vector (or, with --json, a JSON list of {"name", "record"} or
{"name", "malformed"} for another program to compare), and exits 1 if any
vector decodes otherwise than the file says. Default file:
../../internal/wire/testdata/vectors.json beside this one.
"""

import base64
import json
import os
import sys

import kbridge_wire as wire


def b64(b):
    return None if b is None else base64.b64encode(b).decode("ascii")


def as_vector_record(r):
    return {
        "topic": r.topic, "partition": r.partition, "offset": str(r.offset), "timestamp": str(r.timestamp),
        "key": b64(r.key), "value": b64(r.value), "headers": [[n, b64(v)] for n, v in r.headers],
        "replayed": r.replayed,
    }


def decode(v):
    fields = [(base64.b64decode(n), base64.b64decode(x)) for n, x in v["fields"]]
    try:
        return {"name": v["name"], "record": as_vector_record(wire.decode_entry(v["stream"], v["id"], fields))}
    except wire.Malformed as e:
        return {"name": v["name"], "malformed": str(e)}


def main(argv):
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    path = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "internal", "wire", "testdata", "vectors.json")
    with open(path, "rb") as f:
        vectors = json.load(f)["vectors"]
    out, bad = [], 0
    for v in vectors:
        got = decode(v)
        out.append(got)
        if "record" in v:
            ok = got.get("record") == v["record"]
        else:
            ok = "malformed" in got
        bad += not ok
        if not as_json:
            print("%s  %s: %s" % ("ok  " if ok else "FAIL", v["name"], got.get("malformed") or "decoded"))
    if as_json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        print("%d vectors, %d decoded otherwise than the file says" % (len(vectors), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
