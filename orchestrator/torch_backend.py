"""Ray Train's torch backend, with gloo bound to the address Ray reaches each node at.

Gloo picks its network interface from the host's name, and many hosts resolve their own name to
loopback: Debian and Ubuntu write `127.0.1.1 <hostname>` into /etc/hosts, containers often
`127.0.0.1`. On one node that works. Across nodes every rank then offers the others a loopback
address and the process group fails with "Connection refused" on the first round. Ray already
knows the address each node is reached at (the node IP it joined the cluster with), so before
Ray Train sets up the process group every rank binds gloo to the interface that carries that
address (`GLOO_SOCKET_IFNAME`). A `GLOO_SOCKET_IFNAME` the user set stands. NCCL (GPUs) is left
alone: it chooses its own interfaces and skips loopback.

Imported only where the group starts (it imports `ray.train.torch`, hence torch).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

_SIOCGIFADDR = 0x8915


def _ipv4_of(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    return None


def interface_for(ip: str, inet6: Path = Path("/proc/net/if_inet6")) -> str | None:
    """The name of this host's network interface that carries `ip` (IPv4 or IPv6), or None."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return next((name for _, name in socket.if_nameindex() if _ipv4_of(name) == ip), None)
    with contextlib.suppress(OSError):  # Linux: one "<32 hex digits> idx plen scope flags name" per line
        for line in inet6.read_text().splitlines():
            hexaddr, *_, name = line.split()
            if ipaddress.IPv6Address(bytes.fromhex(hexaddr)) == addr:
                return name
    return None


def bind_gloo_to_node_ip() -> str | None:
    """Run on every rank before the process group exists: GLOO_SOCKET_IFNAME = the node IP's interface."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return os.environ["GLOO_SOCKET_IFNAME"]
    import ray

    name = interface_for(ray.util.get_node_ip_address())
    if name is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = name
    return name


class _Backend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        if backend_config.backend == "gloo":
            worker_group.execute(bind_gloo_to_node_ip)
        super().on_start(worker_group, backend_config)


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """TorchConfig whose gloo process group uses each node's Ray address (see the module docstring)."""

    @property
    def backend_cls(self):
        return _Backend
