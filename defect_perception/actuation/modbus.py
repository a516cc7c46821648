"""Modbus TCP actuator (pymodbus async client) with the register map of registers.py.

Per part: reject/stop coils, then one write-multiple-registers request with result code,
bin, stamp and finally the counter (the strobe); then poll the ack register until the PLC
echoes the counter. A resend after a timeout or reconnect writes the same counter, so the
PLC takes each part once (see docs/plc_robot.md, handshake).
"""
from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient

from defect_perception.actuation.base import (
    AckCallback,
    ActuatorError,
    ActuatorOptions,
    LogCallback,
    QueuedActuator,
)
from defect_perception.actuation.queue import Command
from defect_perception.actuation.registers import RegisterMap, encode_block


class ModbusActuator(QueuedActuator):
    kind = "modbus"

    def __init__(self, opts: ActuatorOptions, host: str = "127.0.0.1", port: int = 502,
                 device_id: int = 1, registers: RegisterMap | None = None,
                 on_ack: AckCallback | None = None, on_log: LogCallback | None = None):
        super().__init__(opts, on_ack, on_log)
        self.host, self.port, self.device_id = host, int(port), int(device_id)
        self.map = registers or RegisterMap()
        self._client: AsyncModbusTcpClient | None = None

    @property
    def where(self) -> str:
        return f"Modbus PLC {self.host}:{self.port} (device {self.device_id})"

    async def _connect(self) -> None:
        timeout = self.opts.connect_timeout_ms / 1000
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=max(timeout, 0.2), retries=0,
                                      reconnect_delay=0)
        ok = await client.connect()
        if not ok:
            client.close()
            raise ActuatorError(f"{self.where}: connection refused or unreachable")
        self._client = client

    async def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _check(self, rr, what: str):
        if rr is None or rr.isError():
            raise ActuatorError(f"{self.where}: {what} failed: {rr}")
        return rr

    async def _write(self, cmd: Command) -> None:
        c = self._client
        if c is None or not c.connected:
            raise ActuatorError(f"{self.where}: not connected")
        m = self.map
        if m.reject_coil is not None:
            self._check(await c.write_coil(m.reject_coil, cmd.action in ("reject", "stop-line"),
                                           device_id=self.device_id), f"write reject coil {m.reject_coil}")
        if m.stop_line_coil is not None:
            self._check(await c.write_coil(m.stop_line_coil, cmd.action == "stop-line",
                                           device_id=self.device_id), f"write stop coil {m.stop_line_coil}")
        values = encode_block(cmd.action, cmd.bin, cmd.stamp_ns, cmd.counter)
        self._check(await c.write_registers(m.result_code, values, device_id=self.device_id),
                    f"write registers {m.result_code}..{m.counter}")

    async def _read_ack(self) -> int | None:
        if self.map.ack is None:
            return None
        c = self._client
        if c is None or not c.connected:
            raise ActuatorError(f"{self.where}: not connected")
        rr = self._check(await c.read_holding_registers(self.map.ack, count=1, device_id=self.device_id),
                         f"read ack register {self.map.ack}")
        return int(rr.registers[0])

    async def _write_heartbeat(self, value: int) -> None:
        c = self._client
        if c is None or not c.connected:
            raise ActuatorError(f"{self.where}: not connected")
        self._check(await c.write_register(self.map.heartbeat, value, device_id=self.device_id),
                    f"write heartbeat register {self.map.heartbeat}")
