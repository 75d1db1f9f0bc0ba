"""`fedsa-secure keys`: a CA, a directly issued certificate, and the CSR flow where the key stays home."""

import stat

from fedsa_secure.cli import main
from fedsa_secure.crypto.pki import verify_pair


def test_keys_commands_build_a_working_federation_pki(tmp_path, capsys):
    ca = tmp_path / "ca"
    assert main(["keys", "ca", "--out", str(ca)]) == 0
    assert main(["keys", "issue", "--ca", str(ca), "--name", "aggregator", "--host", "127.0.0.1",
                 "--out", str(tmp_path / "aggregator")]) == 0
    assert verify_pair(ca / "ca.pem", tmp_path / "aggregator" / "aggregator.pem",
                       tmp_path / "aggregator" / "aggregator.key") == "aggregator"

    node = tmp_path / "node-1"
    assert main(["keys", "request", "--name", "node-1", "--out", str(node)]) == 0
    assert stat.S_IMODE((node / "node-1.key").stat().st_mode) == 0o600
    assert main(["keys", "sign", "--ca", str(ca), "--csr", str(node / "node-1.csr"), "--out", str(node)]) == 0
    assert verify_pair(ca / "ca.pem", node / "node-1.pem", node / "node-1.key") == "node-1"
    assert "BEGIN" not in capsys.readouterr().out  # no key material printed


def test_keys_errors_name_the_missing_file(tmp_path, capsys):
    code = main(["keys", "issue", "--ca", str(tmp_path / "nowhere"), "--name", "node-1", "--out", str(tmp_path)])
    assert code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
