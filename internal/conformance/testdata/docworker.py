#!/usr/bin/env python3
"""A kbridge worker written from docs/wire.md alone (by the reviewer of issue 9), for the kit's own tests.

One record at a time; the handler runs in a thread while the main thread extends
its lease. Failures are given up (left pending) and come back by reclaim after V.
BREAK=<name>[,<name>...] turns on deliberate rule violations, so that
TestBrokenWorkers (internal/conformance) shows the kit fails each one:
  plaindel      deletes its consumer with plain XGROUP DELCONSUMER (rule 12): with readahead, loses entries
  readahead     reads 10 entries at a time (handed back with unclaim.lua at SIGTERM, as rule 13 says)
  keepread      with readahead: leaves what was read but not started pending at SIGTERM (rule 13 allows it)
  localretry    retries in process counting deliveries itself, without redeliver.lua (rule 9)
  dlqnocheck    dead-letters with XADD + XACK, without the ownership check (rule 10)
  versiononce   checks the wire version only at start-up (rule 1)
  shortvt       reclaims with a minimum idle time of 0.6 V (rule 7)
  ackfirst      acknowledges before handling (rule 6)
  leasenonatomic, leaseignore, nolease, reclaimall, noversion, decode: other violations (see the code)
NUMS=str writes offset and timestamp in the handler events as decimal strings (as a JavaScript
handler must: JSON.stringify rounds numbers above 2^53).
"""
import base64, json, os, re, signal, sys, threading, time
import redis

E = os.environ
BREAK = set(filter(None, E.get("BREAK", "").split(",")))
P, G, C = E.get("KBRIDGE_PREFIX", "kbridge"), E.get("KBRIDGE_GROUP", "workers"), E["KBRIDGE_CONSUMER"]
V = int(E.get("KBRIDGE_VISIBILITY_TIMEOUT_MS", "10000"))
MAX = int(E.get("KBRIDGE_MAX_DELIVERIES", "5"))
SHUT = int(E.get("KBRIDGE_SHUTDOWN_TIMEOUT_MS", "30000"))
LOG, WNAME = E.get("CONFORMANCE_LOG"), E.get("CONFORMANCE_WORKER", "?")
LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "worker", "lua")
MAX_FIELDS = 1000
CONTRACT = (b"topic", b"partition", b"offset", b"timestamp", b"key", b"value", b"headers")

r = redis.Redis.from_url(E.get("KBRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0"),
                         decode_responses=("decode" in BREAK))
S = {n: r.register_script(open(os.path.join(LUA_DIR, n + ".lua")).read())
     for n in ("lease", "reclaim", "deadletter", "delconsumer")}
stop = False
def on_sig(*_):
    global stop
    if stop: os._exit(130)
    stop = True
signal.signal(signal.SIGTERM, on_sig); signal.signal(signal.SIGINT, on_sig)
def b(x): return x.encode() if isinstance(x, str) else x

# ---- version (rule 1)
vchecked = False
def check_version():
    global vchecked
    if "noversion" in BREAK or ("versiononce" in BREAK and vchecked): return
    vchecked = True
    v = r.hget(P + ":wire", "version")
    if v is not None and b(v) != b"1":
        print("docworker: wire contract version mismatch: %r" % v, file=sys.stderr); sys.exit(1)

# ---- keys
def parse_stream_key(k):
    """-> (topic, partition) of a partition stream key, or None."""
    k = b(k)
    if not k.startswith(b(P) + b":{") or not k.endswith(b"}"): return None
    tag = k[k.rfind(b":{") + 2:-1]
    i = tag.rfind(b":")
    if i <= 0: return None
    t, p = tag[:i], tag[i + 1:]
    if not canon(p, 0, 2**31 - 1): return None
    return t, int(p)

def canon(v, lo, hi):
    if not isinstance(v, bytes) or not re.fullmatch(rb"-?(0|[1-9][0-9]*)", v) or v == b"-0": return False
    n = int(v); return lo <= n <= hi

# ---- decoding (rule 5)
B64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
class Malformed(Exception): pass
def decode(stream, eid, pairs):
    try: return decode_(stream, eid, pairs)
    except Malformed: raise
    except Exception as e: raise Malformed("%s: %s" % (type(e).__name__, e))  # e.g. RecursionError
def decode_(stream, eid, pairs):
    f = {}
    for k, v in pairs: f[b(k)] = b(v)
    if sum(1 for k in f if not k.startswith(b"dlq_")) > MAX_FIELDS: raise Malformed("more than %d fields" % MAX_FIELDS)
    replay = b(stream).endswith(b":replay")
    sk = b(stream)[:-len(b":replay")] if replay else b(stream)
    tp = parse_stream_key(sk)
    if tp is None: raise Malformed("stream key")
    topic = f.get(b"topic")
    if not topic: raise Malformed("topic missing/empty")
    if topic != tp[0]: raise Malformed("topic not the stream's")
    if not canon(f.get(b"partition"), 0, 2**31 - 1): raise Malformed("partition")
    if int(f[b"partition"]) != tp[1]: raise Malformed("partition not the stream's")
    if not canon(f.get(b"offset"), 0, 2**63 - 1): raise Malformed("offset")
    if not canon(f.get(b"timestamp"), -2**63, 2**63 - 1): raise Malformed("timestamp")  # doc gives no range
    if not replay and b(eid) != f[b"offset"] + b"-1": raise Malformed("ID is not <offset>-1")
    hdrs = None
    if b"headers" in f:
        try: txt = f[b"headers"].decode("utf-8")
        except UnicodeDecodeError: raise Malformed("headers not UTF-8")
        try: h = json.loads(txt)
        except ValueError: raise Malformed("headers not JSON")
        if not isinstance(h, list): raise Malformed("headers not an array")
        hdrs = []
        for e in h:
            if not isinstance(e, list) or len(e) != 2 or not isinstance(e[0], str) or not (e[1] is None or isinstance(e[1], str)):
                raise Malformed("header element")
            name = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in e[0])
            if e[1] is not None:
                ev = e[1].encode("utf-8", "surrogatepass")
                if not B64.fullmatch(ev) or base64.b64encode(base64.b64decode(ev)) != ev: raise Malformed("header value base64")
            hdrs.append([name, e[1]])
    return dict(topic=topic.decode("utf-8", "replace"), partition=int(f[b"partition"]), offset=int(f[b"offset"]),
                timestamp=int(f[b"timestamp"]), key=f.get(b"key"), value=f.get(b"value"), headers=hdrs,
                dlq_group=f.get(b"dlq_group"), replayed=replay)

# ---- the conformance handler
def log(ev):
    if not LOG: return
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try: os.write(fd, (json.dumps(ev) + "\n").encode())
    finally: os.close(fd)
def handler(stream, eid, n, rec, out):
    ev = dict(event="start", worker=WNAME, stream=b(stream).decode(), id=b(eid).decode(), deliveries=n,
              topic=rec["topic"], partition=rec["partition"], offset=rec["offset"], timestamp=rec["timestamp"],
              key=None if rec["key"] is None else base64.b64encode(rec["key"]).decode(),
              value=None if rec["value"] is None else base64.b64encode(rec["value"]).decode(),
              headers=rec["headers"], replayed=rec["replayed"])
    if E.get("NUMS") == "str": ev.update(offset=str(rec["offset"]), timestamp=str(rec["timestamp"]))
    log(ev)
    parts = (rec["value"] or b"").split(b"|")
    act = parts[min(n, len(parts)) - 1]
    ok = True
    if act == b"fail": ok = False
    elif act.startswith(b"sleep:") or act.startswith(b"sleepfail:"):
        try: time.sleep(int(act.split(b":", 1)[1]) / 1000)
        except ValueError: pass
        ok = act.startswith(b"sleep:")
    elif act.startswith(b"wait:") or act.startswith(b"waitfail:"):
        f, deadline = "%s.%s.%d" % (LOG, act.split(b":", 1)[1].decode(), n), time.monotonic() + 60
        while not os.path.exists(f) and time.monotonic() < deadline: time.sleep(0.01)
        ok = act.startswith(b"wait:")
    ev = dict(ev, event="end", result="ok" if ok else "fail"); log(ev)
    out.append(ok)

# ---- dead letters (rule 10)
def deadletter(stream, eid, pairs, reason, err, n):
    fields = []
    many = len({b(k) for k, _ in pairs if not b(k).startswith(b"dlq_")}) > MAX_FIELDS
    for k, v in dict((b(k), v) for k, v in pairs).items():
        if not k.startswith(b"dlq_") and (not many or k in CONTRACT): fields += [k, v]
    fields += [b"dlq_reason", reason, b"dlq_error", err, b"dlq_group", G, b"dlq_consumer", C,
               b"dlq_deliveries", str(n), b"dlq_stream", stream, b"dlq_id", eid, b"dlq_time", str(int(time.time() * 1000))]
    sk = b(stream)[:-len(b":replay")] if b(stream).endswith(b":replay") else b(stream)
    if "dlqnocheck" in BREAK:
        r.xadd(sk + b":dlq", dict(zip(fields[::2], fields[1::2]))); r.xack(stream, G, eid); return 1
    return S["deadletter"](keys=[stream, sk + b":dlq"], args=[G, C, eid] + fields)

def lease(stream, eid):
    if "leasenonatomic" in BREAK:
        p = r.xpending_range(stream, G, eid, eid, 1, consumername=C)
        time.sleep(0.06)  # the window between the two commands, widened
        if p: r.xclaim(stream, G, C, 0, [eid], justid=True, retrycount=p[0]["times_delivered"])
        return [] if p else [eid]
    return S["lease"](keys=[stream], args=[G, C, eid])

# ---- handle one entry held with delivery count n
def handle(stream, eid, pairs, n):
    global stop
    try: rec = decode(stream, eid, pairs)
    except Malformed as e:
        deadletter(stream, eid, pairs, "malformed", str(e), n); return
    if rec["replayed"] and rec["dlq_group"] is not None and rec["dlq_group"] != b(G):
        r.xack(stream, G, eid); return
    if n > MAX:
        deadletter(stream, eid, pairs, "max-deliveries", "reclaimed with %d deliveries" % n, n); return
    if "ackfirst" in BREAK: r.xack(stream, G, eid)
    out = []; t = threading.Thread(target=handler, args=(stream, eid, n, rec, out), daemon=True); t.start()
    last = time.monotonic(); deadline = None
    while t.is_alive():
        t.join(0.05)
        if stop and deadline is None: deadline = time.monotonic() + SHUT / 1000
        if deadline is not None and time.monotonic() > deadline and t.is_alive():
            print("docworker: handler still running after the shutdown timeout", file=sys.stderr); os._exit(1)
        if time.monotonic() - last >= V / 3000 and "nolease" not in BREAK:
            last = time.monotonic()
            if lease(stream, eid) and "leaseignore" not in BREAK: return  # no longer ours
    if out and out[0]: r.xack(stream, G, eid)
    elif n >= MAX: deadletter(stream, eid, pairs, "max-deliveries", "handler failed", n)
    elif "localretry" in BREAK:  # retry in process, counting deliveries locally (no redeliver.lua)
        time.sleep(int(E.get("KBRIDGE_BACKOFF_MS", "100")) / 1000)
        return handle(stream, eid, pairs, n + 1)
    # else: give it up; reclaim brings it back after V with n+1

# ---- main loop
streams, seen, cursors = [], set(), {}
def discover():
    check_version()
    out = []
    for m in sorted(r.smembers(P + ":streams")):
        if parse_stream_key(m) is None: continue
        for x in (b(m), b(m) + b":replay"):
            try: groups = r.xinfo_groups(x)
            except redis.ResponseError: continue
            if any(b(g["name"]) == b(G) for g in groups): out.append(x)
    return out

last_disc = last_reclaim = 0
while not stop:
    now = time.monotonic()
    if now - last_disc >= 2: streams = discover(); last_disc = now
    if not streams: time.sleep(0.2); continue
    if now - last_reclaim >= min(V / 4000, 5) or "reclaimall" in BREAK:
        last_reclaim = now
        for x in streams:
            if stop: break
            try: cur, ents, counts = S["reclaim"](keys=[x], args=[G, C, (V if "reclaimall" not in BREAK else 0) if "shortvt" not in BREAK else int(V * 0.6), cursors.get(x, "0-0"), 1])
            except redis.ResponseError: continue
            cursors[x] = cur
            for (eid, flat), n in zip(ents, counts):
                seen.add(x); handle(x, eid, list(zip(flat[::2], flat[1::2])), n)
    try: res = r.xreadgroup(G, C, {x: ">" for x in streams}, count=10 if "readahead" in BREAK else 1, block=200)
    except redis.ResponseError as e:
        if "NOGROUP" in str(e): last_disc = 0; continue
        raise
    for x, ents in res or []:
        for k, (eid, fields) in enumerate(ents):
            seen.add(b(x))
            if stop:  # rule 13: hand back what was read but not started (or leave it to be reclaimed)
                if "keepread" not in BREAK:
                    r.eval(open(os.path.join(LUA_DIR, "unclaim.lua")).read(), 1, x, G, C, V, *[e for e, _ in ents[k:]])
                break
            handle(x, eid, list(fields.items()) if isinstance(fields, dict) else fields, 1)
for x in seen:
    if "plaindel" in BREAK: r.xgroup_delconsumer(x, G, C)  # rule 12 broken: drops its pending entries
    else: S["delconsumer"](keys=[x], args=[G, C])
sys.exit(0)
