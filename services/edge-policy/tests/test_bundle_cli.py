"""The bundle tool end to end: keygen, build, verify, notes, refusal, publish."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from mc_edge_policy.bundle_cli import EXIT_OK, EXIT_REFUSED, main


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "policies"
    shutil.copytree(Path(str(resources.files("mc_edge_policy") / "policies")), src)
    return src


def test_keygen_build_verify_notes_publish(
    tmp_path: Path, sources: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key.pem"
    assert main(["keygen", "--kid", "mc-q4", "--out", str(key)]) == EXIT_OK
    keys = tmp_path / "keys.json"
    keys.write_text(capsys.readouterr().out)
    bundle = tmp_path / "bundle.tar.gz"
    build = [
        "build",
        "--src",
        str(sources),
        "--key",
        str(key),
        "--kid",
        "mc-q4",
        "--keys",
        str(keys),
        "--version",
        "3",
        "--out",
        str(bundle),
    ]
    assert main(build) == EXIT_OK
    built = json.loads(capsys.readouterr().out)
    assert built["version"] == 3 and built["tests_passed"] >= 20
    assert main(["verify", str(bundle), "--keys", str(keys)]) == EXIT_OK
    assert ".manifest" in json.loads(capsys.readouterr().out)["files"]
    assert main(["notes", str(bundle)]) == EXIT_OK
    assert "`lifecycle.legacy_plan`" in capsys.readouterr().out
    repo = tmp_path / "repo"
    assert main(["publish", str(bundle), "--repo", str(repo), "--new-repo"]) == EXIT_OK
    published = json.loads(capsys.readouterr().out)
    assert (repo / "targets" / f"{published['sha256']}.mc.tar.gz").exists()
    other = tmp_path / "other.json"
    main(["keygen", "--kid", "mc-q4", "--out", str(tmp_path / "other.pem")])
    other.write_text(capsys.readouterr().out)
    assert main(["verify", str(bundle), "--keys", str(other)]) == EXIT_REFUSED


def test_build_refuses_failing_tests(
    tmp_path: Path, sources: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key.pem"
    main(["keygen", "--kid", "k", "--out", str(key)])
    keys = tmp_path / "keys.json"
    keys.write_text(capsys.readouterr().out)
    test_file = sources / "mc" / "budgets" / "budgets_test.rego"
    test_file.write_text(
        test_file.read_text() + '\ntest_wrong if {\n\tbudgets.throttle == "hard" '
        'with input.tenant as {"burnRate": 0.1}\n}\n'
    )
    out = tmp_path / "bundle.tar.gz"
    code = main(
        [
            "build",
            "--src",
            str(sources),
            "--key",
            str(key),
            "--kid",
            "k",
            "--keys",
            str(keys),
            "--version",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == EXIT_REFUSED
    assert "data.mc.budgets_test.test_wrong" in capsys.readouterr().err
    assert not out.exists()
