"""Trust at the process level: a real aggregator process refuses strangers and keeps serving."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedsa_secure import messages as msg
from fedsa_secure.crypto.pki import create_ca, issue_certificate
from fedsa_secure.errors import TransportError
from fedsa_secure.scaffold import write_toml
from fedsa_secure.transport.client import AggregatorClient
from fedsa_secure.transport.tls import TlsFiles

NODES = ["node-1", "node-2", "node-3"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsa_secure.cli", *args]


@pytest.fixture
def aggregator(tmp_path):
    ca, ca_key = create_ca(tmp_path / "ca")
    certs = {name: issue_certificate(ca, ca_key, name, tmp_path / "ca", hosts=("localhost", "127.0.0.1"),
                                     role="aggregator" if name == "aggregator" else "node")
             for name in ["aggregator", *NODES]}
    cert, key = certs["aggregator"]
    config = write_toml(tmp_path / "aggregator.toml", {
        "aggregator": {"listen": "127.0.0.1:0", "run_dir": tmp_path / "run", "port_file": tmp_path / "port",
                       "join_timeout": 60.0},
        "federation": {"nodes": NODES, "rounds": 1},
        "tls": {"ca_cert": ca, "cert": cert, "key": key},
    })
    process = subprocess.Popen(cli("aggregator", "--config", str(config)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "port").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "aggregator did not start"
        time.sleep(0.1)
    port = int((tmp_path / "port").read_text())
    yield port, ca, certs, tmp_path
    process.kill()
    process.wait()


def test_stranger_is_refused_and_aggregator_keeps_serving(aggregator):
    port, ca, certs, tmp_path = aggregator
    rogue_ca, rogue_key = create_ca(tmp_path / "rogue")
    rogue_cert, rogue_cert_key = issue_certificate(rogue_ca, rogue_key, "node-1", tmp_path / "rogue")
    # The stranger trusts the real CA too (so only the client side of the handshake is wrong):
    # rogue CA first so its own files load, federation CA second so it accepts the aggregator.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(rogue_ca.read_bytes() + ca.read_bytes())
    stranger = AggregatorClient(f"127.0.0.1:{port}", TlsFiles(bundle, rogue_cert, rogue_cert_key), rpc_timeout=10,
                                server_name="aggregator", reconnect_for=0.1, retry_backoff=0.05)
    with pytest.raises(TransportError):
        stranger.poll(wait=0.5)
    stranger.close()
    cert, key = certs["node-1"]
    with AggregatorClient(f"127.0.0.1:{port}", TlsFiles(ca, cert, key), rpc_timeout=30, server_name="aggregator") as node:
        reply = node.poll(wait=1.0)
    # The aggregator asks every node for selection scores as soon as enough have joined; one node alone waits.
    assert isinstance(reply, (msg.Wait, msg.SelectRequest))


def test_bad_key_file_is_named(tmp_path):
    ca, ca_key = create_ca(tmp_path / "ca")
    cert, key = issue_certificate(ca, ca_key, "node-1", tmp_path / "ca")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    config = write_toml(tmp_path / "node.toml", {
        "node": {"name": "node-1", "aggregator": "127.0.0.1:1", "state_dir": tmp_path / "state"},
        "tls": {"ca_cert": ca, "cert": cert, "key": garbage},
    })
    result = subprocess.run(cli("node", "--config", str(config)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(garbage) in result.stderr


def test_unknown_config_key_stops_the_aggregator_with_its_name(tmp_path):
    config = tmp_path / "aggregator.toml"
    config.write_text('[aggregator]\nlisten = "127.0.0.1:0"\nrun_dir = "r"\nlisen = 1\n')
    result = subprocess.run(cli("aggregator", "--config", str(config)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "aggregator.lisen" in result.stderr and "allowed keys" in result.stderr
