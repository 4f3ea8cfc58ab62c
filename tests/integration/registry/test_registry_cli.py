"""``patchray registry``: list, show, promote, rollback and verify, as a user types them."""

from __future__ import annotations

import pytest

from patchray import cli, storage
from patchray.registry.store import ModelRegistry
from tests.integration.registry.test_registry import NAME, model_files
from tests.unit.registry.test_card import make_card

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path, monkeypatch) -> ModelRegistry:
    registry = ModelRegistry(str(tmp_path / "registry"))
    for i in range(2):
        registry.register(model_files(tmp_path, str(i)), make_card())
    monkeypatch.setenv("PATCHRAY_REGISTRY", registry.root)
    return registry


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["registry", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_promote_rollback_verify(registry, capsys):
    assert run(capsys, "promote", NAME, "1", "--to", "production")[1] == \
        f"{NAME}@production: (new) -> 1\n"
    assert run(capsys, "promote", NAME, "2", "--to", "production")[1] == \
        f"{NAME}@production: 1 -> 2\n"
    code, out, _ = run(capsys, "list")
    assert code == 0 and f"{NAME:<28} 1,2" in out and "production=2" in out
    code, out, _ = run(capsys, "show", f"{NAME}@production")
    assert code == 0 and f"{NAME}@2  (production)" in out
    assert "int8" in out and "FAIL: val AUC 0.9000" in out and "pass (serving default)" in out
    assert "limit: Trained on 3 patients." in out
    code, out, _ = run(capsys, "rollback", NAME, "--alias", "production")
    assert code == 0 and out == f"{NAME}@production: 2 -> 1 (rolled back)\n"
    code, out, _ = run(capsys, "verify", f"{NAME}@production")
    assert code == 0 and out == f"{NAME}@1: ok: 2 files match the sha256 in its card\n"
    assert '"version": 1' in run(capsys, "show", f"{NAME}@1", "--json")[1]


def test_errors_are_one_line_naming_what_is_wrong(registry, capsys):
    storage.write_bytes(registry.uri(NAME, 2, "model.xml"), b"<tampered/>")
    code, _, err = run(capsys, "verify", f"{NAME}@2")
    assert code == 2 and "model.xml: sha256" in err and "does not match its card" in err
    code, _, err = run(capsys, "show", "nosuch@production")
    assert code == 2 and "has no alias 'production'" in err
    code, _, err = run(capsys, "rollback", NAME, "--alias", "staging")
    assert code == 2 and "does not exist: nothing to roll back" in err
