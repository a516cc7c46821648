"""`defect-perception plc-sim`: a Modbus TCP PLC simulator with the default register map.

Prints one line per event (part taken, resend, heartbeat lost/back) and acknowledges each
part by echoing its counter, optionally after a delay, like a PLC program would.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default 5020; 0 = any free port)")
    parser.add_argument("--device-id", type=int, default=1, help="Modbus device (unit) id (default 1)")
    parser.add_argument("--ack-delay-ms", type=float, default=0.0, help="delay before acknowledging a part")
    parser.add_argument("--no-ack", action="store_true", help="never acknowledge (to test timeouts)")
    parser.add_argument("--registers", help="YAML/JSON file with a register map (default: built-in map)")
    parser.add_argument("--heartbeat-timeout", type=float, default=2.0,
                        help="seconds without a heartbeat change before reporting the vision system dead")
    parser.add_argument("--retain", help="file keeping the last part counter taken, like a PLC's retained "
                                         "memory: a part resent after a PLC crash is not taken twice")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument("--log", help="also append events as JSON lines to this file (flushed per line)")


def run(args: argparse.Namespace) -> int:
    from defect_perception.actuation.plc_sim import PlcSimulator
    from defect_perception.actuation.registers import RegisterMap, RegisterMapError

    try:
        regs = RegisterMap()
        if args.registers:
            import yaml

            with open(args.registers) as f:
                regs = RegisterMap.from_dict(yaml.safe_load(f), args.registers)
    except (OSError, RegisterMapError) as e:
        print(f"plc-sim: {e}", file=sys.stderr)
        return 2
    log_file = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115 (lives for the run)

    def event(kind: str, data: dict) -> None:
        rec = {"event": kind, "t": round(time.time(), 6), **data}
        if log_file is not None:
            log_file.write(json.dumps(rec) + "\n")
        if args.json:
            print(json.dumps(rec), flush=True)
        elif kind == "part":
            print(f"part #{data['counter']:<5} stamp {data['stamp_ns']} -> {data['action']:<9} "
                  f"bin {data['bin']}"
                  f"  reject_coil={int(data['reject_coil'])} stop_coil={int(data['stop_coil'])}", flush=True)
        else:
            print(f"{kind} {data if data else ''}".rstrip(), flush=True)

    async def main() -> int:
        sim = PlcSimulator(args.host, args.port, regs, args.device_id, args.ack_delay_ms / 1000.0,
                           not args.no_ack, args.heartbeat_timeout, on_event=event, retain_path=args.retain)
        try:
            port = await sim.start()
        except OSError as e:
            print(f"plc-sim: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
            return 1
        event("listening", {"host": args.host, "port": port})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.stop()
        event("stopped", {"parts": len(sim.parts), "resends": sim.resends})
        return 0

    try:
        return asyncio.run(main())
    finally:
        if log_file is not None:
            log_file.close()
