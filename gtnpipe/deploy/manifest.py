"""The artifact manifest: `manifest.json` in every artifacts/<device>/ folder.

It says what the folder holds (the compiled model, reference inputs and logits, the report),
how it was made (profile, arch, teacher and student cache keys, dataset fingerprint, package
versions), how it was checked (parity and accuracy per precision) and the sha256 of every
file. `gtnpipe/schemas/manifest.schema.json` is its JSON schema (draft 2020-12).

Torch-free: `gtnpipe bench` reads and verifies manifests on devices without the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gtnpipe.errors import ArtifactError
from gtnpipe.fsutil import atomic_write_json, sha256_file

__all__ = ["MANIFEST", "SCHEMA_VERSION", "file_records", "load_manifest", "schema", "verify_file_hashes", "verify_files",
           "write_manifest"]

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "manifest.schema.json"


def schema() -> dict[str, Any]:
    return dict(json.loads(_SCHEMA_PATH.read_text()))


def _validate(manifest: dict[str, Any], where: str) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        field = ".".join(map(str, first.absolute_path)) or "(top level)"
        raise ArtifactError(f"{where}: field {field!r}: {first.message} ({len(errors)} schema error(s) in all; "
                            f"the schema is gtnpipe/schemas/manifest.schema.json). Rebuild the artifact with 'gtnpipe build'")


def file_records(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each named file (relative to `folder`)."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in sorted(names)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Validate against the schema and write `folder/manifest.json` atomically."""
    _validate(manifest, f"manifest for {folder}")
    path = folder / MANIFEST
    atomic_write_json(path, manifest)
    return path


def load_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, schema-checked; a clear error when the folder is not an artifact."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ArtifactError(f"{folder} is not a folder; pass an artifact folder made by 'gtnpipe build' (artifacts/<device>)")
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST}: it is not a gtnpipe artifact folder (made by 'gtnpipe build')")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); rebuild the artifact with 'gtnpipe build'") from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path} has schema_version {found!r}; this gtnpipe reads version {SCHEMA_VERSION}. "
                            "Rebuild the artifact, or use the gtnpipe version that built it")
    _validate(manifest, str(path))
    return manifest


def verify_file_hashes(folder: Path, files: dict[str, Any], *, listing: str, purpose: str, fix: str) -> None:
    """Every file `files` lists (name -> {"sha256": ...}, names relative to `folder`) exists inside `folder` with its
    recorded sha256; the first that does not is an ArtifactError naming it. `listing` is the JSON file that lists
    them, `purpose` what a verified folder is used for, `fix` what to do."""
    for name, record in files.items():
        path = Path(folder) / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{folder}/{listing} lists {name!r}, a path outside the folder; refusing it")
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: the folder is incomplete; {fix}")
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in {listing} (expected {record['sha256'][:16]}…, "
                                f"found {digest[:16]}…): the file was modified or damaged; refusing to {purpose} it. {fix}")


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded sha256; the first mismatch is an error naming it."""
    verify_file_hashes(folder, manifest["files"], listing=MANIFEST, purpose="benchmark",
                       fix="copy the whole artifact folder again or rebuild it with 'gtnpipe build'")
