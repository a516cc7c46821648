"""Actuator configuration (config/actuators.yaml): which machines get the decisions.

```yaml
actuators:
  - {type: modbus, name: plc, host: 127.0.0.1, port: 5020, device_id: 1, registers: {...}}
  - {type: opcua, name: plc_ua, url: opc.tcp://plc:4840, nodes: {...}, security: {...}}
  - {type: robot, name: arm, bins: {reject: 1}, working_distance_m: 0.3, ack_topic: robot/ack}
```
Common keys for modbus/opcua: queue_capacity, ack_timeout_ms, heartbeat_ms, connect_timeout_ms,
backoff_min_ms, backoff_max_ms, log_interval_ms, bins ({action: bin}). Unknown keys are errors
with a suggestion.
"""
from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path
from typing import Any

from defect_perception.actuation.base import AckCallback, ActuatorOptions, LogCallback, QueuedActuator
from defect_perception.actuation.robot import DEFAULT_BINS, RobotConfig
from defect_perception.core.yaml_file import read_yaml_mapping


class ActuatorConfigError(ValueError):
    """Bad actuator configuration; names the file, entry and key."""


_COMMON = [f.name for f in fields(ActuatorOptions) if f.name not in ("name", "queue_dir")]
_KEYS = {
    "modbus": {"type", "name", "host", "port", "device_id", "registers", "bins", *_COMMON},
    "opcua": {"type", "name", "url", "nodes", "security", "bins", *_COMMON},
    "robot": {"type", "name", *[f.name for f in fields(RobotConfig)]},
}


def load_config(path: str | Path) -> list[dict[str, Any]]:
    """Read and check the actuator list (no connection is made)."""
    p = Path(path)
    entries = read_yaml_mapping(p, "actuator config", ActuatorConfigError).get("actuators")
    if not isinstance(entries, list):
        raise ActuatorConfigError(f"actuator config {p}: expected a top-level 'actuators:' list")
    return check_entries(entries, str(p))


def check_entries(entries: list[dict], where: str = "actuators") -> list[dict]:
    names = set()
    for i, e in enumerate(entries):
        at = f"{where}: actuators[{i}]"
        if not isinstance(e, dict):
            raise ActuatorConfigError(f"{at}: expected a mapping, got {e!r}")
        kind = e.get("type")
        if kind not in _KEYS:
            raise ActuatorConfigError(f"{at}: type={kind!r} is not one of {sorted(_KEYS)}")
        name = e.get("name") or kind
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ActuatorConfigError(f"{at}: name={name!r} must be letters, digits, _ or -")
        if name in names:
            raise ActuatorConfigError(f"{at}: name {name!r} used twice")
        names.add(name)
        for k in e:
            if k not in _KEYS[kind]:
                close = difflib.get_close_matches(k, sorted(_KEYS[kind]), n=1, cutoff=0.4)
                raise ActuatorConfigError(f"{at} ({name}): unknown key {k!r} for type {kind}"
                                          + (f"; did you mean {close[0]!r}?" if close else ""))
        bins = e.get("bins") or {}
        bad = [a for a in bins if a not in DEFAULT_BINS]
        if bad:
            raise ActuatorConfigError(f"{at} ({name}): bins has unknown actions {bad} "
                                      f"(allowed: {list(DEFAULT_BINS)})")
        if kind == "opcua" and not e.get("url"):
            raise ActuatorConfigError(f"{at} ({name}): 'url' is required (opc.tcp://host:port/path)")
    return entries


def build_plc_actuators(entries: list[dict], queue_dir: str | Path, on_ack: AckCallback | None = None,
                        on_log: LogCallback | None = None) -> list[QueuedActuator]:
    """Construct (not start) the Modbus / OPC UA actuators of the config. `on_log(level, text)`
    receives their state changes and queue/acknowledge problems (default: Python logging)."""
    from defect_perception.actuation.registers import RegisterMap

    out: list[QueuedActuator] = []
    for e in entries:
        kind = e["type"]
        if kind == "robot":
            continue
        name = e.get("name") or kind
        opts = ActuatorOptions(name=name, queue_dir=Path(queue_dir),
                               **{k: e[k] for k in _COMMON if k in e})
        try:
            if kind == "modbus":
                from defect_perception.actuation.modbus import ModbusActuator

                act = ModbusActuator(opts, host=e.get("host", "127.0.0.1"), port=int(e.get("port", 502)),
                                     device_id=int(e.get("device_id", 1)),
                                     registers=RegisterMap.from_dict(e.get("registers"), f"{name}.registers"),
                                     on_ack=on_ack, on_log=on_log)
            else:
                from defect_perception.actuation.opcua import OpcUaActuator, OpcUaSecurity

                sec = e.get("security") or {}
                allowed = [f.name for f in fields(OpcUaSecurity)]
                bad = [k for k in sec if k not in allowed]
                if bad:
                    raise ActuatorConfigError(f"{name}.security: unknown keys {bad} (allowed: {allowed})")
                act = OpcUaActuator(opts, e["url"], e.get("nodes") or {}, OpcUaSecurity(**sec), on_ack=on_ack,
                                    on_log=on_log)
        except ActuatorConfigError:
            raise
        except (ValueError, RuntimeError, TypeError) as err:
            raise ActuatorConfigError(f"actuator {name}: {err}") from None
        act.bins = {**DEFAULT_BINS, **(e.get("bins") or {})}
        out.append(act)
    return out


def robot_configs(entries: list[dict]) -> list[RobotConfig]:
    return [RobotConfig(**{k: v for k, v in e.items() if k != "type"})
            for e in entries if e["type"] == "robot"]
