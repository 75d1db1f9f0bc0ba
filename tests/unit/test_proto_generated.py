"""The checked-in generated code must be exactly what scripts/generate_protos.sh produces from protos/."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e '.[test]'); cannot regenerate protos")
    subprocess.run(
        ["bash", str(REPO / "scripts" / "generate_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "fedsa_secure" / "proto" / name).read_bytes()
        checked_in = (REPO / "fedsa_secure" / "proto" / name).read_bytes()
        assert fresh == checked_in, f"fedsa_secure/proto/{name} is stale: run scripts/generate_protos.sh"


def test_generated_code_imports_with_installed_runtime_without_warnings() -> None:
    # A fresh interpreter, so the import really happens here and any version warning is an error.
    code = (
        "from fedsa_secure.proto import federation_pb2 as pb, federation_pb2_grpc as g; "
        "assert pb.DESCRIPTOR.package == 'fedsa_secure.proto'; "
        "assert {x.name for x in pb.DESCRIPTOR.services_by_name['Federation'].methods} == {'Poll', 'Send'}; "
        "assert hasattr(g, 'FederationStub')"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
