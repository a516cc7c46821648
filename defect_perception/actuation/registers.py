"""Modbus register map (configurable) and how a command is encoded into it.

Default map (0-based Modbus addresses, holding registers unless noted; see docs/plc_robot.md):

| address | name         | written by | meaning |
|---------|--------------|------------|---------|
| HR 0    | heartbeat    | vision     | toggles 0/1 every heartbeat period; stale => vision dead |
| HR 1    | result_code  | vision     | 1 pass, 2 reject, 3 review, 4 stop-line |
| HR 2    | bin          | vision     | target bin number |
| HR 3-6  | stamp        | vision     | part stamp (ns), 64 bit, most significant word first |
| HR 7    | counter      | vision     | part counter 1..65535, written LAST in the same request (strobe) |
| HR 8    | ack          | PLC        | PLC echoes the counter once it has taken the part |
| coil 0  | reject       | vision     | 1 when the part must be rejected (reject or stop-line) |
| coil 1  | stop_line    | vision     | 1 when the line must stop |
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

RESULT_CODES = {"pass": 1, "reject": 2, "review": 3, "stop-line": 4}
ACTION_OF_CODE = {v: k for k, v in RESULT_CODES.items()}


class RegisterMapError(ValueError):
    """A register map entry that cannot work (names the key and value)."""


@dataclass(frozen=True)
class RegisterMap:
    heartbeat: int = 0
    result_code: int = 1
    bin: int = 2
    stamp: int = 3
    counter: int = 7
    ack: int | None = 8  # None: no handshake (delivered once written)
    reject_coil: int | None = 0
    stop_line_coil: int | None = 1

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "registers") -> RegisterMap:
        d = dict(d or {})
        names = [f.name for f in fields(cls)]
        for k in d:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1, cutoff=0.4)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RegisterMapError(f"{where}: unknown key {k!r} (allowed: {', '.join(names)}){hint}")
        for k, v in d.items():
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535):
                raise RegisterMapError(f"{where}.{k}={v!r}: must be an address 0..65535 or null")
        m = cls(**d)
        m.check(where)
        return m

    def check(self, where: str = "registers") -> None:
        """The data registers written in one request must be contiguous and not overlap others."""
        if not (self.result_code + 1 == self.bin and self.bin + 1 == self.stamp
                and self.stamp + 4 == self.counter):
            raise RegisterMapError(
                f"{where}: result_code, bin, stamp (4 words) and counter must be consecutive so they "
                f"are written in one request (got result_code={self.result_code}, bin={self.bin}, "
                f"stamp={self.stamp}, counter={self.counter})")
        block = set(range(self.result_code, self.counter + 1))
        for name in ("heartbeat", "ack"):
            a = getattr(self, name)
            if a is not None and a in block:
                raise RegisterMapError(f"{where}.{name}={a} overlaps the data block "
                                       f"{self.result_code}..{self.counter}")
        if self.ack is not None and self.ack == self.heartbeat:
            raise RegisterMapError(f"{where}: ack and heartbeat share address {self.ack}")

    @property
    def size(self) -> int:
        """Holding registers a simulator must provide."""
        return max(a for a in (self.heartbeat, self.counter, self.ack or 0)) + 1


def stamp_words(stamp_ns: int) -> list[int]:
    return [(stamp_ns >> s) & 0xFFFF for s in (48, 32, 16, 0)]


def words_stamp(words: list[int]) -> int:
    v = 0
    for w in words:
        v = (v << 16) | (w & 0xFFFF)
    return v


def encode_block(action: str, bin_: int, stamp_ns: int, counter: int) -> list[int]:
    """Values for result_code..counter, in register order."""
    if action not in RESULT_CODES:
        raise RegisterMapError(f"action {action!r} has no result code (known: {list(RESULT_CODES)})")
    return [RESULT_CODES[action], bin_ & 0xFFFF, *stamp_words(stamp_ns), counter & 0xFFFF]
