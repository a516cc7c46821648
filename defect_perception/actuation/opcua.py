"""OPC UA actuator (asyncua client): the Modbus semantics on configured node ids.

Per part it writes reject / stop_line (Boolean), result_code, bin, stamp, then counter
(the strobe), and waits for the server's `ack` node to echo the counter. Data types are
read from the server once per connection, so the PLC's variable types (Int16, Int32,
UInt32, Int64 ...) are respected. Security: anonymous, username/password, and/or a client
certificate with a security policy (Basic256Sha256, SignAndEncrypt by default). Secrets
come from a file or an environment variable and are never logged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua

from defect_perception.actuation.base import (
    AckCallback,
    ActuatorError,
    ActuatorOptions,
    LogCallback,
    QueuedActuator,
)
from defect_perception.actuation.queue import Command
from defect_perception.actuation.registers import RESULT_CODES

NODE_KEYS = ("result_code", "bin", "stamp", "counter", "ack", "reject", "stop_line", "heartbeat")
REQUIRED_NODES = ("result_code", "counter")
POLICIES = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MESSAGE_MODES = ("Sign", "SignAndEncrypt")


def read_secret(where: str, file: str | None, env: str | None) -> str | None:
    """A secret from a file (first line) or an environment variable; errors never show it."""
    if file:
        p = Path(file).expanduser()
        try:
            return p.read_text().splitlines()[0] if p.stat().st_size else ""
        except OSError as e:
            raise ActuatorError(f"{where}: cannot read secret file {p}: {e.strerror}") from None
    if env:
        if env not in os.environ:
            raise ActuatorError(f"{where}: environment variable {env} is not set")
        return os.environ[env]
    return None


@dataclass
class OpcUaSecurity:
    policy: str = "None"
    mode: str = "SignAndEncrypt"
    certificate: str | None = None
    private_key: str | None = None
    private_key_password_file: str | None = None
    private_key_password_env: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None

    def check(self, where: str) -> None:
        if self.policy not in POLICIES:
            raise ActuatorError(f"{where}.policy={self.policy!r} is not one of {POLICIES}")
        if self.mode not in MESSAGE_MODES:
            raise ActuatorError(f"{where}.mode={self.mode!r} is not one of {MESSAGE_MODES}")
        if self.policy != "None":
            for k in ("certificate", "private_key"):
                v = getattr(self, k)
                if not v:
                    raise ActuatorError(f"{where}: policy {self.policy} needs '{k}' (a PEM or DER file)")
                if not Path(v).expanduser().is_file():
                    raise ActuatorError(f"{where}.{k}: file {v} not found")
        if self.username and not (self.password_file or self.password_env):
            raise ActuatorError(f"{where}: username {self.username!r} needs password_file or password_env")

    def describe(self) -> str:
        """For the start-up log: what is used, never the secrets."""
        auth = f"user {self.username!r}" if self.username else "anonymous"
        return f"policy {self.policy}" + (f"/{self.mode}" if self.policy != "None" else "") + f", {auth}"


class OpcUaActuator(QueuedActuator):
    kind = "opcua"

    def __init__(self, opts: ActuatorOptions, url: str, nodes: dict[str, str],
                 security: OpcUaSecurity | None = None, on_ack: AckCallback | None = None,
                 on_log: LogCallback | None = None):
        super().__init__(opts, on_ack, on_log)
        self.url = url
        missing = [k for k in REQUIRED_NODES if not nodes.get(k)]
        unknown = [k for k in nodes if k not in NODE_KEYS]
        if missing or unknown:
            raise ActuatorError(f"actuator {opts.name}: nodes " + (f"missing {missing} " if missing else "")
                                + (f"unknown {unknown} (allowed: {NODE_KEYS})" if unknown else ""))
        self.node_ids = dict(nodes)
        self.security = security or OpcUaSecurity()
        self.security.check(f"actuator {opts.name}: security")
        self._client: Client | None = None
        self._nodes: dict = {}
        self._types: dict[str, ua.VariantType] = {}

    @property
    def where(self) -> str:
        return f"OPC UA {self.url}"

    async def _connect(self) -> None:
        self._client = client = await make_client(
            self.url, self.security, self.opts.connect_timeout_ms / 1000, f"actuator {self.name}")
        try:
            await client.connect()
        except BaseException as e:
            self._client = None
            raise explain_error(e, self.url, self.security) from None
        try:
            self._nodes = {k: client.get_node(v) for k, v in self.node_ids.items()}
            self._types = {}
            for k, n in self._nodes.items():
                self._types[k] = await n.read_data_type_as_variant_type()
        except BaseException as e:
            await self._disconnect()
            raise ActuatorError(f"OPC UA {self.url}: node check failed: {explain_error(e, self.url, None)}") \
                from None

    async def _disconnect(self) -> None:
        if self._client is not None:
            c, self._client = self._client, None
            await c.disconnect()

    async def _put(self, key: str, value) -> None:
        node = self._nodes.get(key)
        if node is None:
            return
        vt = self._types[key]
        if vt != ua.VariantType.Boolean:
            value = int(value)
        await node.write_value(ua.DataValue(ua.Variant(value, vt)))

    async def _write(self, cmd: Command) -> None:
        if self._client is None:
            raise ActuatorError(f"OPC UA {self.url}: not connected")
        await self._put("reject", cmd.action in ("reject", "stop-line"))
        await self._put("stop_line", cmd.action == "stop-line")
        await self._put("result_code", RESULT_CODES[cmd.action])
        await self._put("bin", cmd.bin)
        await self._put("stamp", cmd.stamp_ns)
        await self._put("counter", cmd.counter)

    async def _read_ack(self) -> int | None:
        node = self._nodes.get("ack")
        if node is None:
            return None
        return int(await node.read_value())

    async def _write_heartbeat(self, value: int) -> None:
        if "heartbeat" in self._nodes:
            await self._put("heartbeat", bool(value) if self._types["heartbeat"] == ua.VariantType.Boolean
                            else value)


async def make_client(url: str, sec: OpcUaSecurity, timeout_s: float, where: str) -> Client:
    client = Client(url, timeout=max(timeout_s, 0.5))
    if sec.username:
        client.set_user(sec.username)
        client.set_password(read_secret(f"{where}: password", sec.password_file, sec.password_env) or "")
    if sec.policy != "None":
        from asyncua.crypto import security_policies

        policy = getattr(security_policies, f"SecurityPolicy{sec.policy}")
        uri = _certificate_uri(Path(sec.certificate).expanduser())
        if uri:  # servers check that our ApplicationUri matches the certificate's
            client.application_uri = uri
        key_pw = read_secret(f"{where}: private key password", sec.private_key_password_file,
                             sec.private_key_password_env)
        await client.set_security(policy, certificate=str(Path(sec.certificate).expanduser()),
                                  private_key=str(Path(sec.private_key).expanduser()),
                                  private_key_password=key_pw,
                                  server_certificate=(str(Path(sec.server_certificate).expanduser())
                                                      if sec.server_certificate else None),
                                  mode=getattr(ua.MessageSecurityMode, sec.mode))
    return client


def _certificate_uri(path: Path) -> str | None:
    """The application URI in a certificate's subjectAltName (PEM or DER)."""
    from cryptography import x509

    data = path.read_bytes()
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None
    return uris[0] if uris else None


_USER = ("BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected")
_CERT = ("BadCertificateUntrusted", "BadSecurityChecksFailed", "BadCertificateInvalid",
         "BadCertificateUseNotAllowed", "BadCertificateUriInvalid", "BadCertificateTimeInvalid",
         "BadSecurityPolicyRejected")


def explain_error(e: BaseException, url: str, sec: OpcUaSecurity | None) -> ActuatorError:
    """Turn asyncua/socket errors into one operator-readable line (no secrets)."""
    name = type(e).__name__
    code = getattr(e, "code", None)
    if isinstance(e, ua.UaStatusCodeError) and isinstance(code, int):
        from asyncua.ua.status_codes import get_name_and_doc

        try:
            name = get_name_and_doc(code)[0]
        except Exception:  # unknown code: keep the class name
            pass
    text = f"{name}: {e}" if str(e) and str(e) != name else name
    if any(k in text for k in _USER):
        who = f"user {sec.username!r}" if sec and sec.username else "anonymous login"
        return ActuatorError(f"OPC UA {url} rejected {who} ({name}): wrong password or user not allowed; "
                             "check the password file / environment variable")
    if any(k in text for k in _CERT):
        cert = sec.certificate if sec else None
        return ActuatorError(f"OPC UA {url} refused the secure channel ({name}): the server does not trust "
                             f"our certificate {cert} or the policy; add it to the server's trusted list")
    if isinstance(e, ConnectionRefusedError):
        return ActuatorError(f"OPC UA {url}: connection refused (server down?)")
    if isinstance(e, (TimeoutError,)) or name == "TimeoutError":
        return ActuatorError(f"OPC UA {url}: timed out (server unreachable or not answering)")
    return ActuatorError(f"OPC UA {url}: {text}")


async def probe(url: str, sec: OpcUaSecurity, timeout_s: float = 3.0) -> None:
    """Connect once and disconnect; raises ActuatorError with a clear reason."""
    sec.check("security")
    client = await make_client(url, sec, timeout_s, "probe")
    try:
        await client.connect()
    except BaseException as e:
        raise explain_error(e, url, sec) from None
    await client.disconnect()
