"""Common machinery for PLC actuators: queue first, deliver in order, handshake, reconnect.

An actuator owns an asyncio loop in a daemon thread, so the sorter's callbacks only pay
for one SQLite commit (`submit`). The worker delivers the oldest queued command, waits for
the machine's acknowledge (the counter echoed back) with a timeout, removes the command
only then, and on any failure reconnects with exponential backoff. A heartbeat toggles at a
fixed period while connected. `status()` gives what diagnostics need (connected, queue
depth, outage duration, last error).
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


class QueuedActuator:
    kind = "base"

    def __init__(self, opts: ActuatorOptions, on_ack: AckCallback | None = None):
        self.opts = opts
        self.name = opts.name
        self.on_ack = on_ack or (lambda *a: None)
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
            log.error("%s: %s", self.name, e)
            self.on_ack(cmd.stamp_ns, self.name, "refused", str(e), None)
            return False
        while self.queue.evicted:
            old = self.queue.evicted.pop(0)
            self.counters["evicted"] += 1
            msg = f"queue full: evicted queued pass for part {old.stamp_ns} to keep {cmd.action}"
            log.error("%s: %s", self.name, msg)
            self.on_ack(old.stamp_ns, self.name, "evicted", msg, None)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

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
            if self.connected:
                try:
                    await asyncio.wait_for(self._disconnect(), 1.0)
                except Exception:  # closing a dead link: nothing left to report
                    pass

    def _set_down(self, error: str) -> None:
        if self.connected:
            log.warning("%s: connection lost: %s", self.name, error)
        self.connected = False
        self.last_error = error
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outages += 1

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
        self.counters["reconnects"] += 1
        if self._outage_since is not None:
            log.info("%s: connected after %.1f s", self.name, time.monotonic() - self._outage_since)
        self._outage_since = None
        return True

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
                self.last_error = str(e)
                log.warning("%s: %s", self.name, e)
                await self._sleep(backoff / 1000)
                backoff = min(backoff * 2, self.opts.backoff_max_ms)
                continue
            except Exception as e:  # link failure: reconnect and resend the same command
                self._set_down(_explain(e))
                try:
                    await asyncio.wait_for(self._disconnect(), 1.0)
                except Exception:  # the link is already gone
                    pass
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
            if not self.connected:
                continue
            self._heartbeat_value ^= 1
            try:
                await asyncio.wait_for(self._write_heartbeat(self._heartbeat_value), 1.0)
            except Exception as e:  # the worker notices the dead link on its next request
                self.last_error = f"heartbeat: {_explain(e)}"

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
