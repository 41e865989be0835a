"""A kbridge worker in Python: redis-py and the wire contract's Lua scripts (docs/wire.md).

    pip install -r requirements.txt        # redis-py
    KBRIDGE_REDIS_URL=redis://127.0.0.1:6379/0 python3 kbridge_worker.py mymodule:handle
    python3 kbridge_worker.py --conformance   # the conformance kit's handler (kbridge conformance)

The handler is a function handle(record) of a module: return to acknowledge the
record, raise to fail it (retried with backoff, dead-lettered after
KBRIDGE_MAX_DELIVERIES deliveries), raise Reject to dead-letter it at once.
record is a kbridge_wire.Record: topic, partition, offset, timestamp, key and
value (bytes, None for a Kafka null), headers [(name, bytes or None)],
replayed, deliveries. Handlers run in a thread pool (KBRIDGE_CONCURRENCY).

Configuration, from the environment (the names the conformance kit sets):
KBRIDGE_REDIS_URL, KBRIDGE_PREFIX (kbridge), KBRIDGE_GROUP (workers),
KBRIDGE_CONSUMER (<host>-<pid>-<random>), KBRIDGE_VISIBILITY_TIMEOUT_MS (10000,
the same for every worker of the group), KBRIDGE_MAX_DELIVERIES (5),
KBRIDGE_BACKOFF_MS (1000, doubling up to 60000), KBRIDGE_SHUTDOWN_TIMEOUT_MS
(30000), KBRIDGE_CONCURRENCY (8), KBRIDGE_LUA_DIR (the scripts: ./lua, else
../../worker/lua beside this file), KBRIDGE_LOG_LEVEL (INFO).

SIGTERM/SIGINT: stop reading, let running handlers finish within the shutdown
timeout, acknowledge, delete the consumer where it holds nothing, exit 0; exit 1
if handlers were still running (their entries stay pending and are reclaimed).
A second signal exits at once (130). A single Redis only (not a Cluster).
"""

import base64
import concurrent.futures
import importlib
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time

import redis

import kbridge_wire as wire

log = logging.getLogger("kbridge_worker")


class Reject(Exception):
    """Raise from a handler to dead-letter the record at once (reason "rejected")."""


class WireVersionError(Exception):
    """Redis holds a wire contract version this worker does not speak."""


def _env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v else default


def _lua_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("KBRIDGE_LUA_DIR"), os.path.join(here, "lua"), os.path.join(here, "..", "..", "worker", "lua")):
        if d and os.path.isfile(os.path.join(d, "lease.lua")):
            return d
    raise SystemExit("kbridge_worker: the Lua scripts of docs/wire.md are not found: set KBRIDGE_LUA_DIR")


class Message:
    """An entry this worker holds: decoded record (or the decoding error) and its delivery count."""

    def __init__(self, stream, id_, fields, deliveries):
        self.stream, self.id, self.fields, self.deliveries = stream, id_, fields, deliveries
        self.record, self.error = None, None
        try:
            self.record = wire.decode_entry(stream, id_, fields)
            self.record.deliveries = deliveries
        except Exception as e:  # wire.Malformed; anything else too: never crash on an entry, dead-letter it
            self.error = e if isinstance(e, wire.Malformed) else wire.Malformed("%s: %s" % (type(e).__name__, e))


class Worker:
    def __init__(self, handler, redis_url=None, prefix=None, group=None, consumer=None):
        e = os.environ
        self.handler = handler
        self.url = redis_url or e.get("KBRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.prefix = prefix or e.get("KBRIDGE_PREFIX", "kbridge")
        self.group = group or e.get("KBRIDGE_GROUP", "workers")
        self.consumer = consumer or e.get("KBRIDGE_CONSUMER") or "%s-%d-%06x" % (socket.gethostname(), os.getpid(), random.getrandbits(24))
        self.vt_ms = _env_int("KBRIDGE_VISIBILITY_TIMEOUT_MS", 10000)
        self.max_deliveries = _env_int("KBRIDGE_MAX_DELIVERIES", 5)
        self.backoff_ms = _env_int("KBRIDGE_BACKOFF_MS", 1000)
        self.backoff_max_ms = max(self.backoff_ms, 60000)
        self.shutdown_timeout = _env_int("KBRIDGE_SHUTDOWN_TIMEOUT_MS", 30000) / 1000
        self.concurrency = _env_int("KBRIDGE_CONCURRENCY", 8)
        self.reclaim_interval = min(self.vt_ms / 4000, 5.0)
        self.discovery_interval = 2.0
        # Binary-safe: never decode_responses=True, which turns values into str and breaks bytes.
        self.r = redis.Redis.from_url(self.url, decode_responses=False, socket_timeout=10, health_check_interval=30)
        d = _lua_dir()
        self.scripts = {}
        for name in ("lease", "redeliver", "reclaim", "deadletter", "unclaim", "delconsumer"):
            with open(os.path.join(d, name + ".lua"), encoding="utf-8") as f:
                self.scripts[name] = self.r.register_script(f.read())
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.held = {}  # (stream, id) → Message: pending under this consumer, lease extended
        self.queue = []  # held but not started
        self.running = 0
        self.slots = threading.Semaphore(self.concurrency)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="handler")
        self.streams = []  # bytes keys read: partition and replay streams where the group exists
        self.cursors = {}

    # --- Redis helpers -------------------------------------------------------

    def check_version(self):
        v = self.r.hget(wire.version_key(self.prefix), "version")
        if v is not None and v != str(wire.VERSION).encode():
            raise WireVersionError("%s says wire version %r; this worker speaks version %d" % (wire.version_key(self.prefix), v, wire.VERSION))

    def discover(self):
        """Registry members and their replay streams, where the group exists (rule: never create it)."""
        out = []
        for s in sorted(self.r.smembers(wire.registry_key(self.prefix))):
            try:
                wire.parse_stream_key(wire.text(s))
            except ValueError:
                log.warning("registry holds %r, not a partition stream key", s)
                continue
            for key in (s, s + b":replay"):
                try:
                    groups = self.r.xinfo_groups(key)
                except redis.ResponseError:
                    continue  # no such key
                if any(g["name"] == self.group.encode() for g in groups):
                    out.append(key)
        return out

    def hold(self, m):
        with self.lock:
            self.held[(m.stream, m.id)] = m

    def release(self, m):
        with self.lock:
            self.held.pop((m.stream, m.id), None)

    def held_in(self, stream):
        with self.lock:
            return [i for (s, i) in self.held if s == stream]

    def ack(self, m):
        self.r.xack(m.stream, self.group, m.id)
        self.release(m)

    def dead_letter(self, m, reason, error):
        """deadletter.lua: dead letter + XACK, only while the entry is pending under this consumer."""
        fields = []
        own = [k for k in m.fields if not k.startswith(wire.DLQ_PREFIX)]
        if len(own) > wire.MAX_FIELDS:  # malformed for that: keep the contract's fields (Lua unpacks < 8000 values)
            own = [k for k in (wire.TOPIC, wire.PARTITION, wire.OFFSET, wire.TIMESTAMP, wire.KEY, wire.VALUE, wire.HEADERS) if k in m.fields]
        for k in own:
            fields += [k, m.fields[k]]
        fields += [b"dlq_reason", reason, b"dlq_error", str(error)[:2000], b"dlq_group", self.group,
                   b"dlq_consumer", self.consumer, b"dlq_deliveries", str(m.deliveries), b"dlq_stream", m.stream,
                   b"dlq_id", m.id, b"dlq_time", str(int(time.time() * 1000))]
        dlq = wire.dlq_key(wire.partition_stream_of(wire.text(m.stream))).encode("utf-8", "surrogateescape")
        try:
            done = self.scripts["deadletter"](keys=[m.stream, dlq], args=[self.group, self.consumer, m.id] + fields)
        except redis.RedisError as e:
            log.error("dead-lettering %s %s failed; it stays pending: %s", m.stream, m.id, e)
            done = None
        if done == 1:
            log.warning("dead-lettered %s %s (%s): %s", wire.text(m.stream), wire.text(m.id), reason, error)
        elif done == 0:
            log.warning("not dead-lettering %s %s: no longer pending under this consumer", wire.text(m.stream), wire.text(m.id))
        self.release(m)

    # --- handling ------------------------------------------------------------

    def admit(self, m):
        """A delivered entry: handle it (True), or settle it at once (False)."""
        if m.error is not None:
            self.dead_letter(m, wire.REASON_MALFORMED, m.error)
            return False
        dlq_group = m.fields.get(b"dlq_group")
        if m.record.replayed and dlq_group and dlq_group != self.group.encode():
            self.ack(m)  # another group's dead letter: that group processed the record already
            return False
        if m.deliveries > self.max_deliveries:
            self.dead_letter(m, wire.REASON_MAX_DELIVERIES, "delivered %d times (max %d): the workers that held it stopped" % (m.deliveries, self.max_deliveries))
            return False
        return True

    def process(self, m):
        try:
            while True:
                try:
                    self.handler(m.record)
                except Reject as e:
                    self.dead_letter(m, wire.REASON_REJECTED, e)
                    return
                except Exception as e:  # a failed delivery
                    if m.deliveries >= self.max_deliveries:
                        self.dead_letter(m, wire.REASON_MAX_DELIVERIES, e)
                        return
                    wait = min(self.backoff_ms * 2 ** (m.deliveries - 1), self.backoff_max_ms) / 1000
                    log.info("%s %s failed (delivery %d), retry in %.1fs: %s", wire.text(m.stream), wire.text(m.id), m.deliveries, wait, e)
                    if self.stopping.wait(wait):
                        self.release(m)  # stopping: leave it pending, reclaimed with its count
                        return
                    n = self.scripts["redeliver"](keys=[m.stream], args=[self.group, self.consumer, m.id])
                    if n < 0:
                        self.release(m)  # another worker took it
                        return
                    m.deliveries = m.record.deliveries = n
                    continue
                self.ack(m)
                return
        except redis.RedisError as e:
            log.error("Redis error on %s %s; leaving it to be reclaimed: %s", wire.text(m.stream), wire.text(m.id), e)
            self.release(m)
        finally:
            with self.lock:
                self.running -= 1
            self.slots.release()

    def start(self, m):
        with self.lock:
            self.running += 1
        self.pool.submit(self.process, m)

    def free_slots(self):
        n = 0
        while self.slots.acquire(blocking=False):
            n += 1
        return n

    def reclaim(self, budget):
        """reclaim.lua on each stream: entries idle for the visibility timeout, not the ones we hold."""
        out = []
        for s in self.streams:
            if budget <= 0:
                break
            cursor = self.cursors.get(s, b"0-0")
            try:
                nxt, entries, counts = self.scripts["reclaim"](keys=[s], args=[self.group, self.consumer, self.vt_ms, cursor, budget] + self.held_in(s))
            except redis.ResponseError:
                continue  # stream or group gone
            self.cursors[s] = nxt
            for (id_, flat), n in zip(entries, counts):
                fields = dict(zip(flat[0::2], flat[1::2]))
                m = Message(s, id_, fields, n)
                self.hold(m)
                out.append(m)
                budget -= 1
        return out

    def lease_loop(self):
        """lease.lua every visibility timeout / 3 for everything held."""
        while not self.lease_stop.wait(self.vt_ms / 3000):
            by_stream = {}
            with self.lock:
                for (s, i) in self.held:
                    by_stream.setdefault(s, []).append(i)
            for s, ids in by_stream.items():
                try:
                    lost = self.scripts["lease"](keys=[s], args=[self.group, self.consumer] + ids)
                except redis.RedisError as e:
                    log.warning("lease extension failed on %s: %s", wire.text(s), e)
                    continue
                for i in lost:
                    log.warning("lease lost: %s %s taken by another consumer", wire.text(s), wire.text(i))
                    with self.lock:
                        self.held.pop((s, i), None)

    def run(self):
        """Runs until SIGTERM/SIGINT; returns the exit status."""
        self.check_version()
        self.lease_stop = threading.Event()
        lease = threading.Thread(target=self.lease_loop, name="lease", daemon=True)
        lease.start()
        log.info("worker %s starting (prefix %s, group %s, visibility timeout %dms)", self.consumer, self.prefix, self.group, self.vt_ms)
        next_discovery = next_reclaim = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                if now >= next_discovery:
                    self.check_version()
                    self.streams = self.discover()
                    next_discovery = now + self.discovery_interval
                k = self.free_slots()
                while self.queue and k > 0:
                    self.start(self.queue.pop(0))
                    k -= 1
                if now >= next_reclaim and self.streams:
                    got = self.reclaim(k)
                    next_reclaim = now + self.reclaim_interval
                    for m in got:
                        if self.admit(m):
                            self.queue.append(m)
                if self.queue or not self.streams or k == 0:
                    for _ in range(k):
                        self.slots.release()
                    self.stopping.wait(0.05 if self.streams else 0.5)
                    continue
                per = max(1, k // len(self.streams))
                # A short block: reclaim and discovery are due every few seconds.
                res = self.r.xreadgroup(self.group, self.consumer, {s: ">" for s in self.streams}, count=per, block=200) or []
                for s, entries in res:
                    for id_, fields in entries:
                        if not fields:
                            continue  # deleted before it was read
                        m = Message(s, id_, fields, 1)
                        self.hold(m)
                        if self.admit(m):
                            self.queue.append(m)
                while self.queue and k > 0:
                    self.start(self.queue.pop(0))
                    k -= 1
                for _ in range(k):
                    self.slots.release()
            except WireVersionError:
                raise
            except redis.ResponseError as e:
                if str(e).startswith("NOGROUP"):
                    next_discovery = 0.0
                log.warning("Redis: %s", e)
                self.stopping.wait(0.5)
            except redis.RedisError as e:
                log.warning("Redis unreachable, retrying: %s", e)
                self.stopping.wait(1.0)
        return self.shutdown(lease)

    def shutdown(self, lease):
        """Hand back what was read but not started, wait for the handlers, ack, clean up."""
        if self.queue:
            by_stream = {}
            for m in self.queue:
                by_stream.setdefault(m.stream, []).append(m)
            for s, ms in by_stream.items():
                try:
                    self.scripts["unclaim"](keys=[s], args=[self.group, self.consumer, self.vt_ms] + [m.id for m in ms])
                except redis.RedisError as e:
                    log.warning("cannot hand back %d entries of %s: %s", len(ms), wire.text(s), e)
                for m in ms:
                    self.release(m)
            self.queue = []
        deadline = time.monotonic() + self.shutdown_timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.running == 0:
                    break
            time.sleep(0.02)
        with self.lock:
            running = self.running
        self.lease_stop.set()
        lease.join()
        if running:
            log.warning("%d handlers still running after the shutdown timeout; their entries stay pending", running)
            return 1
        for s in self.streams:
            try:
                self.scripts["delconsumer"](keys=[s], args=[self.group, self.consumer])
            except redis.RedisError:
                pass
        log.info("worker %s stopped", self.consumer)
        return 0


# --- the conformance kit's handler (kbridge conformance) --------------------------

_STEPS = None


def _action(value, deliveries):
    """(sleep seconds, file to wait for or None, fail) for this delivery of a record whose value is an action
    (docs/wire.md, "The conformance kit")."""
    import re
    global _STEPS
    if _STEPS is None:
        step = rb"(?:ok|fail|(?:sleep|sleepfail):[0-9]{1,9}|(?:wait|waitfail):[a-z0-9-]{1,32})"
        _STEPS = re.compile(rb"\A" + step + rb"(?:\|" + step + rb")*\Z")
    if value is None or not _STEPS.match(value):
        return 0.0, None, False
    steps = value.decode().split("|")
    n = min(max(deliveries, 1), len(steps))
    verb, _, arg = steps[n - 1].partition(":")
    sleep = int(arg) / 1000 if verb.startswith("sleep") else 0.0
    wait = "%s.%s.%d" % (os.environ["CONFORMANCE_LOG"], arg, deliveries) if verb.startswith("wait") else None
    return sleep, wait, verb in ("fail", "sleepfail", "waitfail")


def conformance_handler(record):
    def b64(b):
        return None if b is None else base64.b64encode(b).decode("ascii")

    event = {
        "event": "start", "worker": os.environ.get("CONFORMANCE_WORKER", ""), "stream": record.stream, "id": record.id,
        "deliveries": record.deliveries, "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp": record.timestamp, "key": b64(record.key), "value": b64(record.value),
        "headers": [[n, b64(v)] for n, v in record.headers], "replayed": record.replayed,
    }

    def append(e):
        line = (json.dumps(e, ensure_ascii=True) + "\n").encode()
        fd = os.open(os.environ["CONFORMANCE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: lines of concurrent handlers do not mix
        finally:
            os.close(fd)

    append(event)
    sleep, wait, fail = _action(record.value, record.deliveries)
    time.sleep(sleep)
    deadline = time.monotonic() + 60
    while wait and not os.path.exists(wait) and time.monotonic() < deadline:
        time.sleep(0.01)
    append(dict(event, event="end", result="fail" if fail else "ok"))
    if fail:
        raise RuntimeError("the record says fail")


def main(argv):
    logging.basicConfig(level=os.environ.get("KBRIDGE_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv == ["--conformance"]:
        handler = conformance_handler
    elif len(argv) == 1 and ":" in argv[0]:
        mod, fn = argv[0].split(":", 1)
        handler = getattr(importlib.import_module(mod), fn)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    w = Worker(handler)
    signals = []

    def on_signal(signum, frame):
        signals.append(signum)
        if len(signals) > 1:
            os._exit(130)
        log.info("signal %d: shutting down (send it again to exit at once)", signum)
        w.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = w.run()
    except WireVersionError as e:
        log.error("%s", e)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # handler threads still running after the timeout must not hold the exit


if __name__ == "__main__":
    main(sys.argv[1:])
