"""The curated workflow packages that ship with the repo (marketplace/curated/): all 20 verify
against the curator's public key alone, nine are region-pinned quick starts (three per region),
their files are consistent (entrypoints exist, examples match the declared inputs, permissions
are exactly what the steps use), and any change to a signed byte fails verification."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mc_common.errors import MCError
from mc_common.packages import PackageVerification, pack_directory, verify_package
from mc_common.packages.signing import PackageSignatureError
from mc_common.signing import KeyRing, PublicKey

ROOT = Path(__file__).resolve().parents[2]
CURATED = ROOT / "marketplace" / "curated"
REGIONS = ("us-east-1", "eu-west-1", "ap-south-1")
QUICKSTART = re.compile(r"^quickstart-(hello|etl|receipts)-(?P<region>[a-z]{2}-[a-z]+-\d)$")
BUILDER = "https://maestro-conductor.dev/curated/builder@v1"
# Each platform action a step may use and the permission it needs (marketplace/curated/README.md).
ACTION_PERMISSION = {
    "mc/storage.read@v1": "storage:read",
    "mc/storage.list@v1": "storage:read",
    "mc/storage.write@v1": "storage:write",
    "mc/storage.delete@v1": "storage:write",
    "mc/receipts.read@v1": "receipts:read",
    "mc/receipts.write@v1": "receipts:write",
    "mc/decisions.read@v1": "decisions:read",
    "mc/policy.evaluate@v1": "policy:evaluate",
    "mc/limits.check@v1": "limits:check",
    "mc/secrets.read@v1": "secrets:read",
    "mc/http.request@v1": "network:egress",
}
INPUT_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
REFERENCE = re.compile(r"\$\{\{\s*(inputs|steps|run)\.([A-Za-z0-9_-]+)")

PACKAGES = sorted(p.name for p in CURATED.iterdir() if p.is_dir())


@cache
def curator_keys() -> KeyRing:
    return KeyRing([PublicKey.from_file(CURATED / "curator.pub.pem")])


@cache
def verified(name: str) -> PackageVerification:
    return verify_package(pack_directory(CURATED / name), curator_keys())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_exactly_twenty_packages_nine_quick_starts_three_per_region() -> None:
    assert len(PACKAGES) == 20, PACKAGES
    regions = Counter(m["region"] for p in PACKAGES if (m := QUICKSTART.match(p)))
    assert regions == dict.fromkeys(REGIONS, 3)
    kinds = {(m[1], m["region"]) for p in PACKAGES if (m := QUICKSTART.match(p))}
    assert kinds == {(k, r) for k in ("hello", "etl", "receipts") for r in REGIONS}


@pytest.mark.parametrize("name", PACKAGES)
def test_package_verifies_with_the_curator_key_alone(name: str) -> None:
    result = verified(name)
    assert result.manifest.name == f"mc-curated/{name}"
    assert result.manifest.version == "1.0.0"
    assert set(result.signer_key_ids) == set(curator_keys().key_ids())
    assert result.builder == BUILDER
    assert result.predicate_types == ("https://slsa.dev/provenance/v1",)
    # Every file of the directory is in the package (nothing skipped as a dotfile or link).
    on_disk = sorted(
        p.relative_to(CURATED / name).as_posix() for p in (CURATED / name).rglob("*") if p.is_file()
    )
    assert not [p for p in (CURATED / name).rglob("*") if p.name.startswith(".")]
    assert not [p for p in (CURATED / name).rglob("*") if p.is_symlink()]
    signed = sorted(result.files)
    assert [p for p in on_disk if not p.startswith("signatures/")] == signed
    assert {"manifest.yaml", "README.md"} <= set(signed)
    assert any(p.startswith("examples/") for p in signed)


@pytest.mark.parametrize("name", PACKAGES)
def test_files_are_consistent_with_the_manifest(name: str) -> None:
    directory = CURATED / name
    manifest = verified(name).manifest
    declared = {i.name: i for i in manifest.inputs}
    used_permissions: set[str] = set()
    for entry in manifest.entrypoints:
        workflow = load(directory / entry.file)
        assert workflow["apiVersion"] == "mc.workflow/v1"
        assert workflow["name"] == entry.name
        seen: set[str] = set()
        for step in workflow["steps"]:
            assert step["name"] not in seen, f"{entry.file}: step {step['name']} twice"
            assert ("uses" in step) != ("run" in step), f"{entry.file}: {step['name']}"
            if "uses" in step:
                used_permissions.add(ACTION_PERMISSION[step["uses"]])
            for kind, ref in REFERENCE.findall(" ".join(strings(step))):
                if kind == "inputs":
                    assert ref in declared, f"{entry.file}: {step['name']} uses undeclared {ref}"
                elif kind == "steps":
                    assert ref in seen, f"{entry.file}: {step['name']} reads a later step {ref}"
                else:
                    assert ref in {"id", "date"}
            seen.add(step["name"])
    # Least privilege: exactly the permissions the steps use.
    assert sorted(manifest.permissions) == sorted(used_permissions)
    readme = (directory / "README.md").read_text()
    for permission in manifest.permissions:
        assert f"`{permission}`" in readme, f"README does not explain {permission}"
    examples = sorted((directory / "examples").glob("*.yaml"))
    assert examples
    entrypoints = {e.name for e in manifest.entrypoints}
    for path in examples:
        example = load(path)
        assert example["entrypoint"] in entrypoints
        values = example["inputs"]
        assert set(values) <= set(declared), f"{path.name}: undeclared inputs"
        assert {n for n, i in declared.items() if i.required} <= set(values)
        for key, value in values.items():
            expected = INPUT_TYPES[declared[key].type]
            assert isinstance(value, expected) and not (
                isinstance(value, bool) and bool not in expected
            ), f"{path.name}: {key} is not a {declared[key].type}"


@pytest.mark.parametrize("name", [p for p in PACKAGES if QUICKSTART.match(p)])
def test_quick_starts_pin_their_region(name: str) -> None:
    match = QUICKSTART.match(name)
    assert match is not None
    region = match["region"]
    directory = CURATED / name
    manifest = verified(name).manifest
    assert region in manifest.tags and "quickstart" in manifest.tags
    assert {i.name: i.default for i in manifest.inputs}["region"] == region
    for entry in manifest.entrypoints:
        workflow = load(directory / entry.file)
        assert workflow["residency"] == {"region": region, "allowedRegions": [region]}
        # Every URI the quick start touches by default stays in its region.
        for i in manifest.inputs:
            if isinstance(i.default, str) and "://" in i.default:
                assert region in i.default, f"{i.name} default leaves {region}"
    for path in (directory / "examples").glob("*.yaml"):
        values = load(path)["inputs"]
        assert values["region"] == region
        for value in strings(values):
            assert "://" not in value or region in value, f"{path.name}: {value}"
    assert "data residency" in (directory / "README.md").read_text().lower()


def test_one_changed_byte_in_any_file_fails_verification(tmp_path: Path) -> None:
    source = CURATED / "quickstart-etl-eu-west-1"
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert len(files) >= 6  # manifest, README, workflow, example, three signature files
    for relative in files:
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, copy)
        verify_package(pack_directory(copy), curator_keys())  # the untouched copy verifies
        target = copy / relative
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        with pytest.raises(MCError):  # a typed refusal: signature, format or manifest error
            verify_package(pack_directory(copy), curator_keys())


def test_another_key_does_not_verify_them() -> None:
    from mc_common.signing import PemSigner

    other = PemSigner.generate()
    with pytest.raises(PackageSignatureError):
        verify_package(pack_directory(CURATED / PACKAGES[0]), KeyRing([other.public_key]))
