"""Blocking calls to another node's standard parameter services (what `ros2 param` uses),
for a node whose executor spins in another thread (the launcher monitor, the param CLI)."""
from __future__ import annotations

import time
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType, ParameterValue, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient

TYPE_NAMES = {
    ParameterType.PARAMETER_NOT_SET: "not set", ParameterType.PARAMETER_BOOL: "bool",
    ParameterType.PARAMETER_INTEGER: "integer", ParameterType.PARAMETER_DOUBLE: "double",
    ParameterType.PARAMETER_STRING: "string", ParameterType.PARAMETER_BYTE_ARRAY: "byte array",
    ParameterType.PARAMETER_BOOL_ARRAY: "bool array", ParameterType.PARAMETER_INTEGER_ARRAY: "integer array",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "double array",
    ParameterType.PARAMETER_STRING_ARRAY: "string array",
}


class RemoteParamError(RuntimeError):
    """The remote node did not answer (names the node and the call)."""


class RemoteParams:
    def __init__(self, node: Node, target: str, timeout: float = 5.0):
        self.node, self.target, self.timeout = node, target, timeout
        self.client = AsyncParameterClient(node, target)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.client.wait_for_services(timeout_sec=self.timeout if timeout is None else timeout)

    def _wait(self, future, what: str):
        deadline = time.monotonic() + self.timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise RemoteParamError(f"{self.target} did not answer {what} within {self.timeout:.0f} s")
            time.sleep(0.005)
        return future.result()

    def list(self) -> list[str]:
        return sorted(self._wait(self.client.list_parameters(), "list_parameters").result.names)

    def get(self, names: list[str]) -> list[ParameterValue]:
        return list(self._wait(self.client.get_parameters(names), "get_parameters").values)

    def describe(self, names: list[str]) -> list[ParameterDescriptor]:
        return list(self._wait(self.client.describe_parameters(names), "describe_parameters").descriptors)

    def set(self, name: str, value: Any) -> SetParametersResult:
        future = self.client.set_parameters([Parameter(name, value=value)])
        return self._wait(future, "set_parameters").results[0]

    def close(self) -> None:
        for attr in vars(self.client).values():
            if hasattr(attr, "call_async") and hasattr(attr, "srv_name"):
                self.node.destroy_client(attr)


def to_python(value: ParameterValue) -> Any:
    return parameter_value_to_python(value)
