"""Gloo bound to the address Ray reaches a node at, whatever the host name resolves to."""

import contextlib
import os

from orchestrator.torch_backend import NodeBoundTorchConfig, _Backend, bind_gloo_to_node_ip, interface_for


def test_interface_for_finds_the_interface_carrying_an_address(tmp_path):
    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("192.0.2.77") is None  # TEST-NET-1: on no interface here
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("00000000000000000000000000000001 01 80 10 80       lo\n"
                     "fe800000000000000000000000000abc 02 40 20 80     eth7\n")
    assert interface_for("fe80::abc", inet6) == "eth7"
    assert interface_for("::1", inet6) == "lo"
    assert interface_for("2001:db8::1", inet6) is None
    assert interface_for("::1", tmp_path / "missing") is None


def test_a_users_gloo_interface_stands(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth9")
    assert bind_gloo_to_node_ip() == "eth9" and os.environ["GLOO_SOCKET_IFNAME"] == "eth9"


def test_the_node_ip_picks_the_interface(monkeypatch):
    import ray.util

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    assert bind_gloo_to_node_ip() == "lo" and os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "192.0.2.77")
    assert bind_gloo_to_node_ip() is None and "GLOO_SOCKET_IFNAME" not in os.environ


def test_the_config_uses_the_node_bound_backend_for_gloo_only():
    class Group:
        def __init__(self):
            self.ran = []

        def execute(self, fn, *a, **kw):
            self.ran.append(fn)
            raise StopIteration  # stop before Ray Train's own process-group setup

        def execute_single(self, rank, fn, *a, **kw):
            raise StopIteration

    for backend, ran in (("gloo", [bind_gloo_to_node_ip]), ("nccl", [])):
        cfg, group = NodeBoundTorchConfig(backend=backend), Group()
        assert cfg.backend_cls is _Backend
        with contextlib.suppress(StopIteration):
            cfg.backend_cls().on_start(group, cfg)
        assert group.ran == ran, backend
