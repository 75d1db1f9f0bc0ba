"""The package seams of docs/design.md (section 6, Layout), enforced: who may import grpc, cryptography and torch."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fedsa_secure"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules_importing(top: str) -> set[str]:
    return {
        str(path.relative_to(PACKAGE).parts[0]) if len(path.relative_to(PACKAGE).parts) > 1 else path.name
        for path in PACKAGE.rglob("*.py")
        if top in imports_of(path)
    }


def test_only_transport_and_its_generated_stubs_import_grpc():
    assert modules_importing("grpc") <= {"transport", "proto"}


def test_only_crypto_imports_cryptography():
    assert modules_importing("cryptography") == {"crypto"}


def test_secagg_imports_neither_grpc_nor_torch():
    for path in (PACKAGE / "secagg").rglob("*.py"):
        assert not imports_of(path) & {"grpc", "torch"}, path


def test_fedsa_is_free_of_transport():
    for path in (PACKAGE / "fedsa").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "fedsa_secure.transport" not in text and "grpc" not in imports_of(path), path


def test_no_pickle_anywhere():
    for path in PACKAGE.rglob("*.py"):
        assert "pickle" not in imports_of(path), path


def test_the_public_api_is_importable_and_lazy():
    import subprocess
    import sys

    code = ("import sys, fedsa_secure as f, fedsa_secure.config; assert 'torch' not in sys.modules; "
            "assert sorted(f.__all__) == sorted(f._WHERE); [getattr(f, n) for n in f.__all__]; "
            "assert f.Node.__module__ == 'fedsa_secure.node'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
