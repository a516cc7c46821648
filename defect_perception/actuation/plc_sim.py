"""A Modbus TCP server that behaves like the PLC side of the register map.

It takes a part when the counter register changes (a rewrite of the same counter is a
resend, not a new part), reads the block written in the same request, acknowledges by
echoing the counter into the ack register after `ack_delay_s`, and watches the vision
heartbeat. Used by `defect-perception plc-sim`, the tests and the soak benchmark.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from defect_perception.actuation.registers import ACTION_OF_CODE, RegisterMap, words_stamp


@dataclass
class PartSeen:
    counter: int
    stamp_ns: int
    action: str
    bin: int
    reject_coil: bool
    stop_coil: bool
    at: float = field(default_factory=time.time)


class PlcSimulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 5020, registers: RegisterMap | None = None,
                 device_id: int = 1, ack_delay_s: float = 0.0, ack: bool = True,
                 heartbeat_timeout_s: float = 2.0,
                 on_event: Callable[[str, dict], None] | None = None, retain_path: str | None = None):
        self.host, self.port, self.device_id = host, port, device_id
        self.map = registers or RegisterMap()
        self.ack_delay_s = ack_delay_s
        self.ack_enabled = ack
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.on_event = on_event or (lambda kind, data: None)
        self.parts: list[PartSeen] = []
        self.resends = 0
        self.heartbeats = 0
        # retain_path models a PLC's retained memory: the last counter taken survives a restart,
        # so a resend of a part taken just before a crash is not taken twice
        self.retain_path = retain_path
        self._last_counter = self._load_retained()
        self._coils = [False] * 16
        self._regs: list[int] | None = None
        self._last_hb_change: float | None = None
        self._hb_value: int | None = None
        self._hb_lost_reported = False
        self._server: ModbusTcpServer | None = None
        self._tasks: list[asyncio.Task] = []

    async def _action(self, fc, start, address, count, registers, values):
        """Called by pymodbus on every access, before a write is applied."""
        if values is None:
            return None
        m = self.map
        if fc in (5, 15):  # coils (bit addressed, block starts at 0)
            for i, v in enumerate(values):
                if address + i < len(self._coils):
                    self._coils[address + i] = bool(v)
            return None
        self._regs = registers
        written = {address + i: int(v) for i, v in enumerate(values)}
        if m.heartbeat in written and written[m.heartbeat] != self._hb_value:
            self._hb_value = written[m.heartbeat]
            self._last_hb_change = time.monotonic()
            self.heartbeats += 1
            if self._hb_lost_reported:
                self._hb_lost_reported = False
                self.on_event("heartbeat_back", {})
        if m.counter in written:
            counter = written[m.counter]
            regs = [written.get(a, registers[a - start]) for a in range(m.result_code, m.counter + 1)]
            if counter == self._last_counter:
                self.resends += 1
                self.on_event("resend", {"counter": counter})
            else:
                self._last_counter = counter
                self._retain(counter)
                coil = lambda a: self._coils[a] if a is not None else False
                part = PartSeen(counter=counter, stamp_ns=words_stamp(regs[2:6]),
                                action=ACTION_OF_CODE.get(regs[0], f"code{regs[0]}"), bin=regs[1],
                                reject_coil=coil(m.reject_coil), stop_coil=coil(m.stop_line_coil))
                self.parts.append(part)
                self.on_event("part", part.__dict__)
            if self.ack_enabled and m.ack is not None:
                asyncio.get_running_loop().call_later(self.ack_delay_s, self._set_ack, counter, start)
        return None

    def _load_retained(self) -> int:
        if self.retain_path and os.path.exists(self.retain_path):
            try:
                with open(self.retain_path) as f:
                    return int(f.read().strip() or 0)
            except (OSError, ValueError):
                return 0
        return 0

    def _retain(self, counter: int) -> None:
        if self.retain_path:
            tmp = f"{self.retain_path}.tmp"
            with open(tmp, "w") as f:
                f.write(str(counter))
            os.replace(tmp, self.retain_path)

    def _set_ack(self, counter: int, start: int) -> None:
        if self._regs is not None and self.map.ack is not None:
            self._regs[self.map.ack - start] = counter

    async def start(self) -> int:
        """Start serving; returns the bound port (pass port=0 for a free one)."""
        n = max(self.map.size, 16)
        dev = SimDevice(id=self.device_id, simdata=(
            [SimData(0, count=1, datatype=DataType.BITS)],
            [SimData(0, count=1, datatype=DataType.BITS)],
            [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)]), action=self._action)
        self._server = ModbusTcpServer(dev, address=(self.host, self.port))
        self._tasks.append(asyncio.ensure_future(self._server.serve_forever()))
        for _ in range(200):
            if self._server.transport is not None:
                break
            await asyncio.sleep(0.01)
        if self._server.transport is None:
            raise OSError(f"PLC simulator could not listen on {self.host}:{self.port}")
        self.port = self._server.transport.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.ensure_future(self._watch_heartbeat()))
        return self.port

    async def _watch_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if (self._last_hb_change is not None and not self._hb_lost_reported
                    and time.monotonic() - self._last_hb_change > self.heartbeat_timeout_s):
                self._hb_lost_reported = True
                silent = round(time.monotonic() - self._last_hb_change, 1)
                self.on_event("heartbeat_lost", {"silent_s": silent})

    async def stop(self) -> None:
        for t in self._tasks[1:]:
            t.cancel()
        if self._server is not None:
            await self._server.shutdown()
        for t in self._tasks[:1]:
            t.cancel()
        self._tasks.clear()
