"""OPC UA actuator against a real asyncua server on 127.0.0.1: handshake, types, security.

A server-side handler echoes the counter into the ack node like a PLC program would.
Security: username/password (wrong password fails clearly) and Basic256Sha256
SignAndEncrypt with self-signed certificates (an untrusted client certificate fails clearly).
"""
from __future__ import annotations

import asyncio
import datetime
import socket
import time
from pathlib import Path

import pytest
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from defect_perception.actuation.base import ActuatorError, ActuatorOptions
from defect_perception.actuation.opcua import OpcUaActuator, OpcUaSecurity, probe
from defect_perception.actuation.queue import Command

NS = "urn:defect_perception:test-plc"
CLIENT_URI = "urn:freeopcua:client"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_cert(dirpath: Path, name: str, uri: str, usage) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {"organizationName": "test"},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [usage], days=2)
    keys = dirpath.parent / "keys"  # keys never sit in a trust folder
    keys.mkdir(exist_ok=True)
    c, k = dirpath / f"{name}.der", keys / f"{name}.pem"
    c.write_bytes(cert.public_bytes(Encoding.DER))
    k.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return c, k


class _Users:
    def __init__(self, users: dict[str, str]):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.User)
        if self.users.get(username) == password:
            return User(role=UserRole.User)
        return None


class UaPlc:
    """An asyncua server with the vision nodes; a background task acks like a PLC."""

    def __init__(self, users: dict[str, str] | None = None, cert_dir: Path | None = None,
                 trusted: list[Path] | None = None, ack_delay_s: float = 0.0):
        self.port = _free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plc/"
        self.users, self.cert_dir, self.trusted = users, cert_dir, trusted
        self.ack_delay_s = ack_delay_s
        self.parts: list[tuple[int, int, int, bool]] = []  # counter, code, stamp, reject

    async def start(self) -> None:
        self.server = Server(user_manager=_Users(self.users) if self.users else None)
        await self.server.init()
        self.server.set_endpoint(self.url)
        if self.cert_dir is not None:
            cert, key = _make_cert(self.cert_dir, "server", "urn:freeopcua:python:server",
                                   ExtendedKeyUsageOID.SERVER_AUTH)
            await self.server.load_certificate(str(cert))
            await self.server.load_private_key(str(key))
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            store = TrustStore(self.trusted or [], [])
            await store.load()
            self.server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT,
                store))
        idx = await self.server.register_namespace(NS)
        obj = await self.server.nodes.objects.add_object(idx, "Vision")
        self.nodes = {}
        for name, value, vt in (("ResultCode", 0, ua.VariantType.Int16), ("Bin", 0, ua.VariantType.Int16),
                                ("Stamp", 0, ua.VariantType.Int64), ("Counter", 0, ua.VariantType.UInt16),
                                ("Ack", 0, ua.VariantType.UInt16), ("Reject", False, ua.VariantType.Boolean),
                                ("Heartbeat", False, ua.VariantType.Boolean)):
            node = await obj.add_variable(ua.NodeId(f"Vision.{name}", idx), name, ua.Variant(value, vt))
            await node.set_writable()
            self.nodes[name] = node
        self.idx = idx
        await self.server.start()
        self._task = asyncio.ensure_future(self._plc_program())

    def node_ids(self) -> dict[str, str]:
        n = lambda s: f"ns={self.idx};s=Vision.{s}"
        return {"result_code": n("ResultCode"), "bin": n("Bin"), "stamp": n("Stamp"), "counter": n("Counter"),
                "ack": n("Ack"), "reject": n("Reject"), "heartbeat": n("Heartbeat")}

    async def _plc_program(self) -> None:
        last = 0
        while True:
            await asyncio.sleep(0.002)
            counter = await self.nodes["Counter"].read_value()
            if counter != last and counter != 0:
                last = counter
                read = {k: await self.nodes[k].read_value() for k in ("ResultCode", "Stamp", "Reject")}
                self.parts.append((counter, read["ResultCode"], read["Stamp"], read["Reject"]))
                await asyncio.sleep(self.ack_delay_s)
                await self.nodes["Ack"].write_value(ua.Variant(counter, ua.VariantType.UInt16))

    async def stop(self) -> None:
        self._task.cancel()
        await self.server.stop()


def _opts(tmp_path: Path, **kw) -> ActuatorOptions:
    return ActuatorOptions("ua", tmp_path / "queues", heartbeat_ms=100, backoff_min_ms=50, **kw)


async def _wait(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


def test_opcua_handshake_types_and_password(tmp_path, monkeypatch):
    async def main():
        plc = UaPlc(users={"vision": "s3cret-pw"})
        await plc.start()
        try:
            pw = tmp_path / "pw.txt"
            pw.write_text("s3cret-pw\n")
            acks = []
            act = OpcUaActuator(_opts(tmp_path), plc.url, plc.node_ids(),
                                OpcUaSecurity(username="vision", password_file=str(pw)),
                                on_ack=lambda *a: acks.append(a))
            act.start()
            stamps = [1_700_000_000_000_000_000 + i for i in range(4)]
            for i, s in enumerate(stamps):
                act.submit(Command(stamp_ns=s, action=["pass", "reject", "review", "reject"][i], bin=i))
            assert await _wait(lambda: len(acks) == 4), act.status()
            st = act.status()
            act.close()
            assert [a[0] for a in acks] == stamps and {a[2] for a in acks} == {"ack"}
            assert [(p[1], p[2], p[3]) for p in plc.parts] == [
                (1, stamps[0], False), (2, stamps[1], True), (3, stamps[2], False), (2, stamps[3], True)]
            assert st["queue_depth"] == 0 and st["connected"]
            assert "s3cret" not in repr(st)

            # wrong password: a clear error naming the user, never the password
            bad = tmp_path / "bad.txt"
            bad.write_text("wrong-pw")
            with pytest.raises(ActuatorError, match="rejected user 'vision'.*wrong password") as ei:
                await probe(plc.url, OpcUaSecurity(username="vision", password_file=str(bad)))
            assert "wrong-pw" not in str(ei.value)
            # the same through an environment variable, and a missing variable
            monkeypatch.setenv("UA_PW", "nope")
            with pytest.raises(ActuatorError, match="rejected user"):
                await probe(plc.url, OpcUaSecurity(username="vision", password_env="UA_PW"))
            with pytest.raises(ActuatorError, match="UA_PW_MISSING is not set"):
                await probe(plc.url, OpcUaSecurity(username="vision", password_env="UA_PW_MISSING"))
        finally:
            await plc.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_opcua_certificate_trusted_and_untrusted(tmp_path):
    async def main():
        trusted_dir = tmp_path / "trusted"
        trusted_dir.mkdir()
        own = tmp_path / "own"
        own.mkdir()
        good_cert, good_key = _make_cert(trusted_dir, "vision", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
        evil_cert, evil_key = _make_cert(own, "intruder", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
        plc = UaPlc(cert_dir=tmp_path, trusted=[trusted_dir])
        await plc.start()
        try:
            server_cert = str(tmp_path / "server.der")
            sec = OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt", certificate=str(good_cert),
                                private_key=str(good_key), server_certificate=server_cert)
            await probe(plc.url, sec)
            acks = []
            act = OpcUaActuator(_opts(tmp_path), plc.url, plc.node_ids(), sec,
                                on_ack=lambda *a: acks.append(a))
            act.start()
            act.submit(Command(stamp_ns=42, action="reject", bin=1))
            assert await _wait(lambda: len(acks) == 1), act.status()
            act.close()
            assert plc.parts[0][1:] == (2, 42, True)

            bad = OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt", certificate=str(evil_cert),
                                private_key=str(evil_key), server_certificate=server_cert)
            with pytest.raises(ActuatorError, match="does not trust our certificate .*intruder"):
                await probe(plc.url, bad, timeout_s=3)
            # anonymous, unencrypted access to a SignAndEncrypt-only server also fails clearly
            with pytest.raises(ActuatorError, match="OPC UA"):
                await probe(plc.url, OpcUaSecurity(), timeout_s=3)
        finally:
            await plc.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_opcua_config_errors_name_the_field(tmp_path):
    with pytest.raises(ActuatorError, match="policy Basic256Sha256 needs 'certificate'"):
        OpcUaActuator(_opts(tmp_path), "opc.tcp://127.0.0.1:1",
                      {"result_code": "ns=2;i=1", "counter": "ns=2;i=2"},
                      OpcUaSecurity(policy="Basic256Sha256"))
    with pytest.raises(ActuatorError, match="missing \\['counter'\\]"):
        OpcUaActuator(_opts(tmp_path), "opc.tcp://127.0.0.1:1", {"result_code": "ns=2;i=1"})
    with pytest.raises(ActuatorError, match="policy='Basic128'"):
        OpcUaSecurity(policy="Basic128").check("security")
    assert datetime  # noqa: B018  (imported for cert validity arithmetic in future tests)


def test_opcua_unreachable_at_start_and_connect_are_logged_with_the_url(tmp_path):
    async def main():
        plc = UaPlc()  # its port is chosen, the server is not up yet
        logs = []
        ids = {k: f"ns=2;s=Vision.{n}" for k, n in (("result_code", "ResultCode"), ("counter", "Counter"),
                                                     ("ack", "Ack"), ("reject", "Reject"))}
        act = OpcUaActuator(_opts(tmp_path, connect_timeout_ms=500), plc.url, ids,
                            on_log=lambda level, text: logs.append((level, text)))
        act.start()
        try:
            act.submit(Command(stamp_ns=7, action="reject", bin=1))
            assert await _wait(lambda: act.status()["connect_failures"] >= 2), act.status()
            assert len(logs) == 1 and logs[0][0] == "warning", logs
            assert logs[0][1].startswith(f"ua: unreachable at start: OPC UA {plc.url}")
            await plc.start()
            assert plc.idx == 2
            assert await _wait(lambda: len(plc.parts) == 1 and len(logs) == 2, 20), (act.status(), logs)
        finally:
            act.close()
            await plc.stop()
        assert logs[1][0] == "info" and logs[1][1].startswith(f"ua: connected to OPC UA {plc.url} after ")
        assert "delivering 1 queued" in logs[1][1]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_opcua_idle_server_loss_shows_before_the_next_part(tmp_path):
    """The heartbeat write fails when the server goes away: the link is down in diagnostics
    with no part in flight, and the part sent after the server returns still arrives."""
    async def main():
        plc = UaPlc()
        await plc.start()
        logs = []
        act = OpcUaActuator(_opts(tmp_path, connect_timeout_ms=500), plc.url, plc.node_ids(),
                            on_log=lambda level, text: logs.append((level, text)))
        act.start()
        try:
            assert await _wait(lambda: act.status()["connected"]), act.status()
            await plc.stop()
            assert await _wait(lambda: not act.status()["connected"], 10), act.status()
            assert act.status()["outages"] == 1 and plc.url in act.status()["last_error"], act.status()
            assert any("connection lost" in text and "heartbeat" in text for _, text in logs), logs
            await plc.start()  # same port, fresh address space
            assert await _wait(lambda: act.status()["connected"], 20), act.status()
            act.submit(Command(stamp_ns=9, action="reject", bin=1))
            assert await _wait(lambda: len(plc.parts) == 1, 20), act.status()
        finally:
            act.close()
            await plc.stop()

    asyncio.run(asyncio.wait_for(main(), 90))
