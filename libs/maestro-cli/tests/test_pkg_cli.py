"""`maestro pkg`: from `init` to `inspect`, and a tampered package refused with exit 1."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from maestro_cli.main import main
from mc_common.packages import pack_files, read_package
from mc_common.signing import PemSigner


def test_init_pack_sign_verify_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "signing.pem"
    signer = PemSigner.generate()
    signer.save(key)
    public = tmp_path / "signing.pub.pem"
    public.write_bytes(signer.public_key_pem())
    source = tmp_path / "etl"
    assert main(["pkg", "init", str(source), "--name", "acme/etl"]) == 0
    assert main(["pkg", "pack", str(source), "-o", str(tmp_path)]) == 0
    archive = tmp_path / "acme__etl-0.1.0.mwpkg.tgz"
    first = archive.read_bytes()
    assert main(["pkg", "pack", str(source), "-o", str(tmp_path)]) == 0
    assert archive.read_bytes() == first  # deterministic
    assert main(["pkg", "verify", str(archive), "--key", str(public)]) == 1  # unsigned
    assert "not signed" in capsys.readouterr().err
    assert (
        main(
            [
                "pkg", "sign", str(archive), "--key", str(key),
                "--builder", "https://ci.example/mwpkg@v1", "--source-digest", "b" * 40,
            ]
        )
        == 0
    )  # fmt: skip
    assert main(["pkg", "verify", str(archive), "--key", str(public)]) == 0
    capsys.readouterr()
    assert main(["pkg", "inspect", str(archive), "--key", str(public)]) == 0
    screen = capsys.readouterr().out
    assert "acme/etl@0.1.0" in screen and signer.key_id in screen
    assert "https://ci.example/mwpkg@v1" in screen and "b" * 40 in screen
    assert "https://slsa.dev/provenance/v1" in screen

    files = read_package(archive.read_bytes())
    files["workflows/run.yaml"] = b"steps:\n  - name: exfiltrate\n"
    files.pop("signatures/digest.txt")
    tampered = tmp_path / "tampered.mwpkg.tgz"
    tampered.write_bytes(pack_files(files))
    assert main(["pkg", "verify", str(tampered), "--key", str(public)]) == 1
    assert "does not verify" in capsys.readouterr().err
    other = tmp_path / "other.pub.pem"
    other.write_bytes(PemSigner.generate().public_key_pem())
    assert main(["pkg", "verify", str(archive), "--key", str(other)]) == 1


def test_a_traversing_archive_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    bad = tmp_path / "evil.mwpkg.tgz"
    bad.write_bytes(gzip.compress(raw.getvalue()))
    assert main(["pkg", "verify", str(bad)]) == 1
    assert "path traversal" in capsys.readouterr().err
