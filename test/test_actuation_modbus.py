"""Modbus actuator against a real pymodbus server (the PLC simulator) on 127.0.0.1.

Faults: PLC down at start, PLC restarted mid-run, slow acknowledgements; every part
reaches the PLC exactly once and in order, or sits in the persistent queue and is reported.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from defect_perception.actuation.base import ActuatorOptions, LogThrottle
from defect_perception.actuation.config import ActuatorConfigError, build_plc_actuators, check_entries
from defect_perception.actuation.modbus import ModbusActuator
from defect_perception.actuation.plc_sim import PlcSimulator
from defect_perception.actuation.queue import Command, DeliveryQueue, QueueFull
from defect_perception.actuation.registers import RegisterMap, RegisterMapError, stamp_words, words_stamp

T0 = 1_763_800_000_000_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Plc:
    """The simulator on its own event loop thread, restartable on the same port."""

    def __init__(self, port: int, **kw):
        self.port, self.kw = port, kw
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim: PlcSimulator | None = None
        # every incarnation, kept: a stopping server may still finish a request it had taken
        # (and its PLC program acknowledge it); that part did reach the PLC and must be counted
        self.incarnations: list[PlcSimulator] = []

    def start(self) -> None:
        self.sim = PlcSimulator(port=self.port, **self.kw)
        self.incarnations.append(self.sim)
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(5)

    def stop(self) -> None:
        if self.sim is not None:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(5)
            self.sim = None

    def parts(self) -> list:
        return [p for sim in self.incarnations for p in sim.parts]

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2)


def _wait(pred, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _opts(tmp_path, **kw):
    kw = {"heartbeat_ms": 50, "backoff_min_ms": 20, "backoff_max_ms": 200, "connect_timeout_ms": 300, **kw}
    return ActuatorOptions("plc", tmp_path / "queues", **kw)


def test_register_map_and_encoding():
    assert words_stamp(stamp_words(T0)) == T0
    m = RegisterMap.from_dict({"heartbeat": 20, "result_code": 10, "bin": 11, "stamp": 12, "counter": 16,
                               "ack": 21, "reject_coil": None})
    assert m.size == 22 and m.reject_coil is None
    with pytest.raises(RegisterMapError, match="unknown key 'acknowledge'.*did you mean 'ack'"):
        RegisterMap.from_dict({"acknowledge": 9})
    with pytest.raises(RegisterMapError, match="must be consecutive"):
        RegisterMap.from_dict({"bin": 5})
    with pytest.raises(RegisterMapError, match="heartbeat=3 overlaps"):
        RegisterMap.from_dict({"heartbeat": 3})
    with pytest.raises(ActuatorConfigError, match=r"actuators\[0\] \(plc\): unknown key 'prot'.*'port'"):
        check_entries([{"type": "modbus", "name": "plc", "prot": 502}])
    with pytest.raises(ActuatorConfigError, match="type='profibus'"):
        check_entries([{"type": "profibus"}])


def test_queue_is_persistent_ordered_and_bounded(tmp_path):
    q = DeliveryQueue(tmp_path / "q.sqlite", capacity=3)
    for i, a in enumerate(["pass", "reject", "pass"]):
        q.put(Command(stamp_ns=i, action=a))
    with pytest.raises(QueueFull, match="refused pass"):
        q.put(Command(stamp_ns=3, action="pass"))
    q.put(Command(stamp_ns=4, action="reject"))  # evicts the oldest pass, keeps the reject
    assert [c.stamp_ns for c in q.evicted] == [0]
    q.put(Command(stamp_ns=5, action="review"))  # evicts the other pass
    with pytest.raises(QueueFull, match="REFUSED reject for part 6"):
        q.put(Command(stamp_ns=6, action="reject"))
    q.close()
    q = DeliveryQueue(tmp_path / "q.sqlite", capacity=3)  # reopened: same content, same order
    items = q.items()
    assert [(c.stamp_ns, c.action) for c in items] == [(1, "reject"), (4, "reject"), (5, "review")]
    assert [c.counter for c in items] == [2, 4, 5]  # counters assigned when queued, kept on resend
    seq, first = q.peek()
    q.done(seq)
    assert len(q) == 2 and q.put(Command(stamp_ns=7, action="pass")).counter == 6
    q.close()


def test_plc_down_at_start_restart_midrun_and_slow_acks(tmp_path):
    port = _free_port()
    plc = Plc(port, ack_delay_s=0.0)
    acks = []
    act = ModbusActuator(_opts(tmp_path, ack_timeout_ms=150), port=port, on_ack=lambda *a: acks.append(a))
    act.start()
    try:
        stamps = [T0 + i for i in range(30)]
        actions = ["reject" if i % 3 == 0 else "pass" for i in range(30)]
        for s, a in zip(stamps[:10], actions[:10], strict=True):  # PLC is down: everything queues
            assert act.submit(Command(stamp_ns=s, action=a, bin=int(a == "reject")))
        time.sleep(0.3)
        st = act.status()
        assert not st["connected"] and st["queue_depth"] == 10 and st["connect_failures"] >= 1
        assert "refused" in st["last_error"] or "unreachable" in st["last_error"]
        plc.start()
        assert _wait(lambda: len(acks) == 10), act.status()
        assert act.status()["connected"] and act.status()["outages"] == 1
        for s, a in zip(stamps[10:20], actions[10:20], strict=True):
            act.submit(Command(stamp_ns=s, action=a))
            if s == stamps[14]:
                plc.stop()  # PLC restarted mid-run
                time.sleep(0.2)
                plc.start()
        assert _wait(lambda: len(acks) == 20), act.status()
        # slow PLC: acks later than the timeout -> resend with the same counter, taken once
        plc.sim.ack_delay_s = 0.25
        for s, a in zip(stamps[20:], actions[20:], strict=True):
            act.submit(Command(stamp_ns=s, action=a))
        assert _wait(lambda: len(acks) == 30, 20), act.status()
        st = act.status()
        assert st["ack_timeouts"] >= 1 and st["queue_depth"] == 0
        assert plc.sim.resends >= 1
        time.sleep(0.2)
        assert plc.sim.heartbeats >= 2  # heartbeat toggles while connected
    finally:
        act.close()
        parts = plc.parts()
        plc.close()
    seen = [p.stamp_ns for p in parts]
    assert seen == stamps  # every part exactly once, in order, across the restart
    assert [p.action for p in parts] == actions
    assert all(p.reject_coil == (p.action == "reject") for p in parts)
    assert [a[0] for a in acks] == stamps and {a[2] for a in acks} == {"ack"}


def test_queue_survives_sorter_restart_and_full_queue_is_reported(tmp_path):
    port = _free_port()
    events = []
    act = ModbusActuator(_opts(tmp_path, queue_capacity=4), port=port, on_ack=lambda *a: events.append(a))
    act.start()
    for i, a in enumerate(["reject", "pass", "pass", "reject", "reject", "pass"]):
        act.submit(Command(stamp_ns=T0 + i, action=a))
    act.close()  # sorter stops with the PLC still down
    kinds = [(e[0] - T0, e[2]) for e in events]
    assert kinds == [(1, "evicted"), (5, "refused")]  # loud, never silent; the rejects are all kept
    plc = Plc(port)
    plc.start()
    acks = []
    act = ModbusActuator(_opts(tmp_path, queue_capacity=4), port=port, on_ack=lambda *a: acks.append(a))
    act.start()
    try:
        assert _wait(lambda: len(acks) == 4), act.status()
    finally:
        act.close()
        parts = plc.parts()
        plc.close()
    assert [(p.stamp_ns - T0, p.action) for p in parts] == [(0, "reject"), (2, "pass"), (3, "reject"),
                                                          (4, "reject")]


def test_config_builds_actuators(tmp_path):
    (act,) = build_plc_actuators(check_entries([{"type": "modbus", "name": "line1", "port": 1502,
                                                 "bins": {"reject": 7}, "ack_timeout_ms": 80}]),
                                 tmp_path)
    assert act.port == 1502 and act.bins["reject"] == 7 and act.opts.ack_timeout_ms == 80
    act.close()


def test_plc_sim_command_prints_parts(tmp_path):
    port = _free_port()
    log = tmp_path / "plc.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "defect_perception.cli", "plc-sim", "--port", str(port),
                             "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acks = []
    act = None
    try:
        assert _wait(lambda: log.exists() and "listening" in log.read_text(), 20)
        act = ModbusActuator(_opts(tmp_path), port=port, on_ack=lambda *a: acks.append(a))
        act.start()
        act.submit(Command(stamp_ns=T0, action="reject", bin=1))
        assert _wait(lambda: len(acks) == 1)
    finally:
        if act:
            act.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert f"stamp {T0} -> reject" in out and "reject_coil=1" in out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] == "part"] == ["part"]
    assert events[-1]["event"] == "stopped" and events[-1]["parts"] == 1


def test_plc_sim_retained_counter_ignores_resend_after_crash(tmp_path):
    """The one duplicate window (PLC crash after taking a part, before the vision read the
    acknowledge) is closed by a PLC that retains its last counter, as docs/plc_robot.md asks."""
    from pymodbus.client import AsyncModbusTcpClient

    from defect_perception.actuation.registers import encode_block

    async def write_part(port: int) -> None:
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await c.connect()
        rr = await c.write_registers(1, encode_block("reject", 1, T0, 41), device_id=1)
        assert not rr.isError()
        c.close()

    for retain, expected in ((tmp_path / "retain.txt", 1), (None, 2)):
        port = _free_port()
        plc = Plc(port, retain_path=str(retain) if retain else None)
        plc.start()
        asyncio.run(write_part(port))
        plc.stop()  # crash before the vision saw the acknowledge
        plc.start()
        asyncio.run(write_part(port))  # the vision resends the same counter
        resends = plc.sim.resends
        parts = plc.parts()
        plc.close()
        assert [p.stamp_ns for p in parts] == [T0] * expected
        assert resends == (1 if retain else 0)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_throttle_holds_back_counts_and_ends_on_the_latest_state():
    clock, lines = _Clock(), []
    th = LogThrottle(lambda level, text: lines.append((level, text)), interval_s=10.0, burst=2, clock=clock)
    for text, level in (("lost 1", "warning"), ("up 1", "info"), ("lost 2", "warning"), ("up 2", "info")):
        th("state", level, text)
    th("queue", "error", "evicted part 7")  # another kind has its own limit
    assert lines == [("warning", "lost 1"), ("info", "up 1"), ("error", "evicted part 7")]
    th.flush()
    assert len(lines) == 3  # still no room
    clock.t = 10.5
    th.flush()
    assert lines[-1] == ("warning", "up 2 (1 earlier message(s) of this kind not logged: at most 2 per 10 s)")
    th("state", "info", "up 3")
    th("state", "warning", "lost 3")  # over the limit again: held ...
    th.flush(force=True)  # ... and written at shutdown, never dropped
    assert lines[-2:] == [("info", "up 3"), ("warning", "lost 3")]


def _held(text: str) -> int:
    m = re.search(r"\((\d+) earlier message", text)
    return int(m.group(1)) if m else 0


def test_state_changes_are_logged_naming_the_plc_and_rate_limited(tmp_path):
    """A PLC unreachable from the start used to leave no log line at all, and the
    "connected after" line went to a logger without a handler."""
    port = _free_port()
    plc = Plc(port)
    logs: list[tuple[str, str]] = []
    act = ModbusActuator(_opts(tmp_path, log_interval_ms=4000), port=port,
                         on_log=lambda level, text: logs.append((level, text)))
    act.start()
    try:
        act.submit(Command(stamp_ns=T0, action="reject", bin=1))
        assert _wait(lambda: act.status()["connect_failures"] >= 3), act.status()
        assert len(logs) == 1, logs  # one line for the whole outage, not one per attempt
        level, text = logs[0]
        assert level == "warning" and text.startswith("plc: unreachable at start: ")
        assert f"Modbus PLC 127.0.0.1:{port} (device 1): connection refused or unreachable" in text
        assert f"127.0.0.1:{port}" in act.status()["last_error"]
        plc.start()
        assert _wait(lambda: len(plc.parts()) == 1 and len(logs) == 2), logs
        assert logs[1][0] == "info"
        assert f"plc: connected to Modbus PLC 127.0.0.1:{port} (device 1) after " in logs[1][1]
        assert "unreachable since start" in logs[1][1] and "delivering 1 queued" in logs[1][1]

        # a flapping PLC: 3 restarts = 6 state changes inside one log interval
        for i in range(1, 4):
            plc.stop()
            act.submit(Command(stamp_ns=T0 + i, action="pass"))
            assert _wait(lambda: not act.status()["connected"]), act.status()
            plc.start()
            assert _wait(lambda n=i + 1: len(plc.parts()) == n), act.status()
        flapping = len(logs) - 2
        assert _wait(lambda: "not logged" in logs[-1][1], 8), logs  # the held-back line comes later
    finally:
        act.close()
        plc.close()
    state = [t for _, t in logs[2:]]
    assert flapping < 6 and len(state) < 6, state  # rate-limited (3 per 4 s)
    assert sum(1 + _held(t) for t in state) == 6, state  # ... and every change is accounted for
    assert "connection lost" in state[0] and f"127.0.0.1:{port}" in state[0]
    assert state[-1].startswith("plc: connected to Modbus PLC") and "after" in state[-1]


def test_idle_plc_outage_shows_before_the_next_part(tmp_path):
    """With no parts flowing, a dead PLC used to show as connected until the next decision:
    the failed heartbeat now takes the link down, and the link comes back on its own."""
    port = _free_port()
    plc = Plc(port)
    plc.start()
    logs: list[tuple[str, str]] = []
    act = ModbusActuator(_opts(tmp_path), port=port, on_log=lambda level, text: logs.append((level, text)))
    act.start()
    try:
        assert _wait(lambda: act.status()["connected"]), act.status()
        plc.stop()
        assert _wait(lambda: not act.status()["connected"], 5), act.status()  # heartbeat period 50 ms
        status = act.status()
        assert status["outages"] == 1 and status["queue_depth"] == 0
        assert f"127.0.0.1:{port}" in status["last_error"], status
        assert any(level == "warning" and "connection lost" in text and "heartbeat" in text
                   for level, text in logs), logs
        plc.start()
        assert _wait(lambda: act.status()["connected"], 10), act.status()
        act.submit(Command(stamp_ns=T0, action="reject", bin=1))
        assert _wait(lambda: len(plc.parts()) == 1), act.status()
    finally:
        act.close()
        plc.close()
