"""Common machinery for PLC actuators: queue first, deliver in order, handshake, reconnect.

An actuator owns an asyncio loop in a daemon thread, so the sorter's callbacks only pay
for one SQLite commit (`submit`). The worker delivers the oldest queued command, waits for
the machine's acknowledge (the counter echoed back) with a timeout, removes the command
only then, and on any failure reconnects with exponential backoff. A heartbeat toggles at a
fixed period while connected; a failed heartbeat takes the link down at once, so an idle
line's outage shows in diagnostics before the next part. `status()` gives what diagnostics
need (connected, queue depth, outage duration, last error).

State changes (unreachable at start, connection lost, connected again after N s with K
queued), queue refusals/evictions and acknowledge timeouts are reported through `on_log(level,
text)` (the sorter passes its ROS logger; default: the `defect_perception.actuation` Python
logger), rate-limited per kind by `LogThrottle` so an outage or a flapping link cannot flood
the log: what is held back is counted and the latest held-back line is written, with the
count, as soon as the limit allows. A long outage is repeated every 6 log intervals.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from defect_perception.actuation.queue import Command, DeliveryQueue, QueueFull
from defect_perception.actuation.robot import DEFAULT_BINS

log = logging.getLogger("defect_perception.actuation")

# on_ack(stamp_ns, actuator_name, status, detail, latency_ms); status: ack | queued | refused | evicted
AckCallback = Callable[[int, str, str, str, "float | None"], None]
# on_log(level, text); level: info | warning | error
LogCallback = Callable[[str, str], None]
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def python_log(level: str, text: str) -> None:
    """The default LogCallback: the `defect_perception.actuation` Python logger."""
    log.log(_LEVELS.get(level, logging.WARNING), text)


class LogThrottle:
    """Rate limit for log lines, per key: at most `burst` lines per `interval_s`. A line over
    the limit is held back (the latest one per key, at the most severe level seen) and
    counted; `flush()` writes it once the limit allows, saying how many were not logged, so
    the log always ends on the current state and nothing vanishes without a count.
    Thread-safe (the sorter's callbacks and the actuator's loop both log)."""

    def __init__(self, emit: LogCallback, interval_s: float = 10.0, burst: int = 3, clock=time.monotonic):
        self.emit, self.interval_s, self.burst, self._clock = emit, interval_s, max(1, burst), clock
        self._sent: dict[str, list[float]] = {}
        self._held: dict[str, tuple[str, str, int]] = {}  # key -> (level, text, lines held back)
        self._lock = threading.Lock()

    def _room(self, key: str, now: float) -> bool:
        sent = self._sent.setdefault(key, [])
        sent[:] = [t for t in sent if now - t < self.interval_s]
        return len(sent) < self.burst

    def __call__(self, key: str, level: str, text: str) -> None:
        with self._lock:
            now = self._clock()
            if self._room(key, now):
                out = self._take(key, now, level, text, 0)
            else:
                old_level, _, n = self._held.get(key, ("info", "", 0))
                worst = max(level, old_level, key=lambda lv: _LEVELS.get(lv, logging.WARNING))
                self._held[key] = (worst, text, n + 1)
                out = None
        if out is not None:
            self.emit(*out)

    def _take(self, key: str, now: float, level: str, text: str, extra: int) -> tuple[str, str]:
        """Record one emitted line (lock held); folds in what was held back for `key`."""
        self._sent.setdefault(key, []).append(now)
        held_level, _, n = self._held.pop(key, (level, "", 0))
        n += extra
        if n:
            level = max(level, held_level, key=lambda lv: _LEVELS.get(lv, logging.WARNING))
            text += (f" ({n} earlier message(s) of this kind not logged: at most {self.burst} per "
                     f"{self.interval_s:g} s)")
        return level, text

    def flush(self, force: bool = False) -> None:
        """Write held-back lines whose key has room again, or all of them with `force`."""
        out = []
        with self._lock:
            now = self._clock()
            for key, (level, text, n) in list(self._held.items()):
                if force or self._room(key, now):
                    del self._held[key]
                    out.append(self._take(key, now, level, text, n - 1))
        for line in out:
            self.emit(*line)


class ActuatorError(RuntimeError):
    """A machine connection or configuration problem, worded for the operator."""


class AckTimeout(ActuatorError):
    pass


@dataclass
class ActuatorOptions:
    name: str
    queue_dir: Path
    queue_capacity: int = 10_000
    ack_timeout_ms: float = 500.0
    ack_poll_ms: float = 2.0
    heartbeat_ms: float = 500.0
    connect_timeout_ms: float = 1000.0
    backoff_min_ms: float = 100.0
    backoff_max_ms: float = 5000.0
    log_interval_ms: float = 10000.0  # at most 3 log lines per kind (state, queue, ack) per interval


class QueuedActuator:
    kind = "base"

    def __init__(self, opts: ActuatorOptions, on_ack: AckCallback | None = None,
                 on_log: LogCallback | None = None):
        self.opts = opts
        self.name = opts.name
        self.on_ack = on_ack or (lambda *a: None)
        self.on_log = on_log or python_log
        self._log = LogThrottle(lambda level, text: self.on_log(level, text), opts.log_interval_ms / 1000)
        self._ever_connected = False
        self._next_reminder: float | None = None
        self.bins: dict[str, int] = dict(DEFAULT_BINS)  # action -> bin number sent to the machine
        self.queue = DeliveryQueue(Path(opts.queue_dir) / f"{opts.name}.queue.sqlite", opts.queue_capacity)
        self.connected = False
        self.last_error = ""
        self.counters = {"delivered": 0, "ack_timeouts": 0, "reconnects": 0, "connect_failures": 0,
                         "refused": 0, "evicted": 0}
        self._outage_since: float | None = None
        self._outages: int = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._heartbeat_value = 0
        self._generation = 0  # +1 per connection, so a late failure on an old link is not blamed on a new one

    # ------------------------------------------------------------ public, any thread
    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._wake = asyncio.Event()
            ready.set()
            try:
                self._loop.run_until_complete(self._main())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name=f"actuator-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(5)

    def submit(self, cmd: Command) -> bool:
        """Queue a command (committed before return). False if refused by the full queue,
        which is also reported through on_ack(status="refused")."""
        try:
            self.queue.put(cmd)
        except QueueFull as e:
            self.counters["refused"] += 1
            self._log("queue", "error", f"{self.name} ({self.where}): {e}; the decision is NOT sent to "
                      f"this machine (recorded in the audit log as refused; {self.counters['refused']} "
                      f"refused so far)")
            self.on_ack(cmd.stamp_ns, self.name, "refused", str(e), None)
            return False
        while self.queue.evicted:
            old = self.queue.evicted.pop(0)
            self.counters["evicted"] += 1
            msg = (f"queue full ({self.queue.capacity}): evicted queued pass for part {old.stamp_ns} "
                   f"to keep {cmd.action} for part {cmd.stamp_ns}")
            self._log("queue", "error", f"{self.name} ({self.where}): {msg}; that pass is NOT sent to this "
                      f"machine (recorded in the audit log as evicted; {self.counters['evicted']} "
                      "evicted so far)")
            self.on_ack(old.stamp_ns, self.name, "evicted", msg, None)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

    @property
    def where(self) -> str:
        """The machine's address for messages (subclasses: host:port, URL)."""
        return self.name

    def status(self) -> dict:
        outage = 0.0 if self._outage_since is None else time.monotonic() - self._outage_since
        return {"connected": self.connected, "queue_depth": len(self.queue),
                "outage_s": round(outage, 1), "outages": self._outages,
                "last_error": self.last_error, **self.counters}

    def close(self, timeout: float = 3.0) -> None:
        self._stop = True
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._log.flush(force=True)  # nothing held back is lost at shutdown
        self.queue.close()

    # ------------------------------------------------------------ subclass hooks (async, loop thread)
    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _write(self, cmd: Command) -> None:
        raise NotImplementedError

    async def _read_ack(self) -> int | None:
        """The machine's acknowledge value, or None when no handshake is configured."""
        raise NotImplementedError

    async def _write_heartbeat(self, value: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ worker
    async def _main(self) -> None:
        hb = asyncio.ensure_future(self._heartbeat_loop())
        try:
            await self._worker()
        finally:
            hb.cancel()
            try:
                await hb  # let it finish cancelling before the loop closes
            except (asyncio.CancelledError, Exception):  # its own errors are moot at shutdown
                pass
            if self.connected:
                try:
                    await asyncio.wait_for(self._disconnect(), 1.0)
                except Exception:  # closing a dead link: nothing left to report
                    pass

    def _locate(self, error: str) -> str:
        """An error text that names the machine's address."""
        return error if self.where in error else f"{self.where}: {error}"

    def _set_down(self, error: str) -> None:
        error = self._locate(error)
        queued = len(self.queue)
        if self.connected:
            self._log("state", "warning", f"{self.name}: connection lost: {error}; decisions are queued "
                      f"until it answers again ({queued} queued now)")
        elif not self._ever_connected and self._outage_since is None:
            self._log("state", "warning", f"{self.name}: unreachable at start: {error}; decisions are "
                      f"queued and sent in order when it answers ({queued} queued now; retrying every "
                      f"{self.opts.backoff_min_ms:.0f}..{self.opts.backoff_max_ms:.0f} ms)")
        self.connected = False
        self.last_error = error
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outages += 1
            self._next_reminder = self._outage_since + 6 * self.opts.log_interval_ms / 1000

    async def _drop_link(self, error: str) -> None:
        """Mark the link down (logged, outage started) and close what is left of it."""
        self._set_down(error)
        try:
            await asyncio.wait_for(self._disconnect(), 1.0)
        except Exception:  # the link is already gone
            pass

    async def _ensure_connected(self) -> bool:
        if self.connected:
            return True
        try:
            await asyncio.wait_for(self._connect(), self.opts.connect_timeout_ms / 1000)
        except Exception as e:  # any connect failure: stay down, retry with backoff
            self.counters["connect_failures"] += 1
            self._set_down(_explain(e))
            return False
        self.connected = True
        self._generation += 1
        self.counters["reconnects"] += 1
        queued = len(self.queue)
        if self._outage_since is not None:
            what = "outage" if self._ever_connected else "unreachable since start"
            self._log("state", "info", f"{self.name}: connected to {self.where} after "
                      f"{time.monotonic() - self._outage_since:.1f} s {what}; delivering {queued} "
                      "queued decision(s)")
        elif not self._ever_connected:
            self._log("state", "info", f"{self.name}: connected to {self.where}"
                      + (f"; delivering {queued} decision(s) queued before the start" if queued else ""))
        self._ever_connected = True
        self._outage_since = None
        self._next_reminder = None
        return True

    def _housekeeping(self) -> None:
        """Periodic (loop thread): write held-back log lines; remind of a long outage."""
        now = time.monotonic()
        if (not self.connected and self._outage_since is not None and self._next_reminder is not None
                and now >= self._next_reminder):
            self._next_reminder = now + 6 * self.opts.log_interval_ms / 1000
            self._log("outage", "warning", f"{self.name}: still no connection after "
                      f"{now - self._outage_since:.0f} s ({len(self.queue)} decisions queued): "
                      f"{self.last_error}")
        self._log.flush()

    async def _worker(self) -> None:
        backoff = self.opts.backoff_min_ms
        while not self._stop:
            if not await self._ensure_connected():
                await self._sleep(backoff / 1000)
                backoff = min(backoff * 2, self.opts.backoff_max_ms)
                continue
            item = self.queue.peek()
            if item is None:
                self._wake.clear()
                if self.queue.peek() is None:
                    try:
                        await asyncio.wait_for(self._wake.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
                continue
            seq, cmd = item
            t0 = time.perf_counter()
            try:
                await self._deliver(cmd)
            except AckTimeout as e:
                self.counters["ack_timeouts"] += 1
                self.last_error = self._locate(str(e))
                self._log("ack", "warning", f"{self.name}: {self.last_error} "
                          f"({self.counters['ack_timeouts']} acknowledge timeouts so far)")
                await self._sleep(backoff / 1000)
                backoff = min(backoff * 2, self.opts.backoff_max_ms)
                continue
            except Exception as e:  # link failure: reconnect and resend the same command
                await self._drop_link(_explain(e))
                continue
            backoff = self.opts.backoff_min_ms
            self.queue.done(seq)
            self.counters["delivered"] += 1
            self.on_ack(cmd.stamp_ns, self.name, "ack", f"counter {cmd.counter}",
                        (time.perf_counter() - t0) * 1000)

    async def _deliver(self, cmd: Command) -> None:
        await self._write(cmd)
        deadline = time.monotonic() + self.opts.ack_timeout_ms / 1000
        while True:
            ack = await self._read_ack()
            if ack is None or ack == cmd.counter:
                return
            if time.monotonic() >= deadline:
                raise AckTimeout(f"no acknowledge for part {cmd.stamp_ns} (counter {cmd.counter}) within "
                                 f"{self.opts.ack_timeout_ms:.0f} ms (ack register holds {ack}); will resend")
            await asyncio.sleep(self.opts.ack_poll_ms / 1000)

    async def _heartbeat_loop(self) -> None:
        while not self._stop:
            await asyncio.sleep(self.opts.heartbeat_ms / 1000)
            self._housekeeping()
            if not self.connected:
                continue
            self._heartbeat_value ^= 1
            generation = self._generation
            try:
                await asyncio.wait_for(self._write_heartbeat(self._heartbeat_value), 1.0)
            except Exception as e:  # a dead link while idle shows in diagnostics now, not at the next part
                if not self.connected or generation != self._generation:
                    continue  # the worker already took that link down (and may have a new one)
                await self._drop_link(f"heartbeat: {_explain(e)}")
                self._wake.set()  # the worker reconnects with backoff

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early on close."""
        end = time.monotonic() + seconds
        while not self._stop and time.monotonic() < end:
            await asyncio.sleep(min(0.05, end - time.monotonic()))


def _explain(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return text if isinstance(e, ActuatorError) else f"{type(e).__name__}: {text}"
