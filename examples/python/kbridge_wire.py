"""Decoding of kbridge stream entries: the wire contract (docs/wire.md), version 1.

No dependencies beyond the standard library: the worker (kbridge_worker.py)
reads the entries with redis-py and hands them here as bytes. Every rule below
is the contract's; internal/wire/testdata/vectors.json holds test vectors, and
decode_vectors.py shows this module decodes each of them as the Go code does.
"""

import base64
import binascii
import json
import re

VERSION = 1  # the wire contract version this code speaks

# Entry fields (docs/wire.md, "Entries").
TOPIC, PARTITION, OFFSET, TIMESTAMP = b"topic", b"partition", b"offset", b"timestamp"
KEY, VALUE, HEADERS = b"key", b"value", b"headers"
DLQ_PREFIX = b"dlq_"
REASON_MAX_DELIVERIES, REASON_MALFORMED, REASON_REJECTED = "max-deliveries", "malformed", "rejected"

_UINT = re.compile(rb"\A(?:0|[1-9][0-9]*)\Z")
_INT = re.compile(rb"\A(?:0|-?[1-9][0-9]*)\Z")
_CANON = re.compile(r"\A(?:0|[1-9][0-9]*)\Z")  # a stream key's partition: canonical decimal, as the ingest writes it
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1
MAX_FIELDS = 1000  # fields an entry may have, dlq_* ones aside: more is malformed (docs/wire.md, "Entries")


class Malformed(ValueError):
    """The entry does not follow the wire contract: dead-letter it (reason "malformed")."""


class Record:
    """A decoded entry. key and value are bytes, or None for a Kafka null;
    headers is a list of (name: str, value: bytes or None), in order, names may repeat;
    deliveries is set by the worker (Redis's delivery count, 1 on the first delivery)."""

    __slots__ = ("stream", "id", "topic", "partition", "offset", "timestamp", "key", "value",
                 "headers", "replayed", "fields", "deliveries")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def __repr__(self):
        return "Record(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__ if k != "fields")


def text(b):
    """bytes → str the way this module compares names: UTF-8, undecodable bytes kept (surrogateescape)."""
    return b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b


def stream_key(prefix, topic, partition):
    return "%s:{%s:%d}" % (prefix, topic, partition)


def dlq_key(stream):
    return stream + ":dlq"


def replay_key(stream):
    return stream + ":replay"


def registry_key(prefix):
    return prefix + ":streams"


def version_key(prefix):
    return prefix + ":wire"


def is_replay(stream):
    return stream.endswith(":replay")


def partition_stream_of(stream):
    return stream[: -len(":replay")] if is_replay(stream) else stream


def parse_stream_key(key):
    """'<prefix>:{<topic>:<partition>}' → (prefix, topic, partition); ValueError otherwise."""
    open_ = key.rfind(":{")
    if open_ < 0 or not key.endswith("}"):
        raise ValueError("%r is not a partition stream key" % key)
    tag = key[open_ + 2 : -1]
    colon = tag.rfind(":")
    if colon <= 0 or not _CANON.match(tag[colon + 1 :]):
        raise ValueError("%r is not a partition stream key" % key)
    partition = int(tag[colon + 1 :])
    if partition > _INT32_MAX:
        raise ValueError("%r has no valid partition number" % key)
    return key[:open_], tag[:colon], partition


def entry_id(offset):
    return "%d-1" % offset


def _canonical_b64(s):
    """Standard alphabet, '=' padded, zero padding bits, nothing else: decode, re-encode, compare."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != s:
        return None
    return raw


def _lone_surrogates_replaced(name):
    # json.loads keeps an escaped lone surrogate (\ud800) as is; Go's encoding/json,
    # which wrote the field, puts U+FFFD in its place. The contract follows Go.
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in name)


def decode_headers(raw):
    """The headers field → [(name, value bytes or None)]; Malformed if it is not the contract's JSON."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("field 'headers' is not valid UTF-8") from None
    if not s.lstrip(" \t\r\n").startswith("["):
        raise Malformed("field 'headers' is not a JSON list of [name, base64] pairs")
    try:
        pairs = json.loads(s)
    except Exception as e:  # ValueError, and RecursionError on deep nesting: whatever the parser raises, malformed
        raise Malformed("field 'headers' is not a JSON list of [name, base64] pairs: %s" % type(e).__name__) from None
    if not isinstance(pairs, list):
        raise Malformed("field 'headers' is not a JSON list of [name, base64] pairs")
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, list) or len(p) != 2 or not isinstance(p[0], str):
            raise Malformed("header %d is not a [name, base64] pair" % i)
        name, v = _lone_surrogates_replaced(p[0]), p[1]
        if v is None:
            out.append((name, None))
            continue
        if not isinstance(v, str):
            raise Malformed("header %r value is not a base64 string" % name)
        b = _canonical_b64(v)
        if b is None:
            raise Malformed("header %r value is not canonical padded standard base64" % name)
        out.append((name, b))
    return out


def decode_fields(fields):
    """Fields (a dict, or (name, value) pairs in Redis order: a repeated name, the last counts),
    all bytes → Record without stream/id checks. Malformed on any rule broken."""
    values = dict(fields.items() if isinstance(fields, dict) else fields)
    n = sum(1 for name in values if not name.startswith(DLQ_PREFIX))
    if n > MAX_FIELDS:
        raise Malformed("%d fields (not counting dlq_* ones), more than the %d allowed" % (n, MAX_FIELDS))

    def need(name):
        if name not in values:
            raise Malformed("field %r is missing" % name.decode())
        return values[name]

    topic = need(TOPIC)
    if topic == b"":
        raise Malformed("field 'topic' is empty")
    p = need(PARTITION)
    if not _UINT.match(p) or int(p) > _INT32_MAX:
        raise Malformed("field 'partition' = %r is not a partition number" % p)
    o = need(OFFSET)
    if not _UINT.match(o) or int(o) > _INT64_MAX:
        raise Malformed("field 'offset' = %r is not an offset" % o)
    t = need(TIMESTAMP)
    if not _INT.match(t) or not (-(2**63) <= int(t) <= _INT64_MAX):
        raise Malformed("field 'timestamp' = %r is not Unix milliseconds" % t)
    headers = decode_headers(values[HEADERS]) if HEADERS in values else []
    return Record(topic=text(topic), partition=int(p), offset=int(o), timestamp=int(t),
                  key=values.get(KEY), value=values.get(VALUE), headers=headers, fields=values)


def decode_entry(stream, id_, fields):
    """An entry read from stream (a partition stream or its replay stream) → Record.

    Beyond decode_fields: topic and partition must be the stream key's, and in a
    partition stream the ID must be '<offset>-1' (a replay stream's IDs are not
    offsets: the offset is the field's)."""
    stream, id_ = text(stream), text(id_)
    r = decode_fields(fields)
    try:
        _, topic, partition = parse_stream_key(partition_stream_of(stream))
    except ValueError as e:
        raise Malformed(str(e)) from None
    if r.topic != topic or r.partition != partition:
        raise Malformed("topic %r partition %d is not that of the stream %s" % (r.topic, r.partition, stream))
    if not is_replay(stream) and id_ != entry_id(r.offset):
        raise Malformed("entry ID %s is not %s (offset %d)" % (id_, entry_id(r.offset), r.offset))
    r.stream, r.id, r.replayed = stream, id_, is_replay(stream)
    return r
