"""The package as a user installs it, and where gtnpipe finds its data.

The wheel: built from this checkout with `pip wheel --no-deps --no-build-isolation` (the build backend of this
venv: nothing downloaded for the build), installed with only the `[onnx]` extra into a fresh venv outside the
tree (normal pip from the package index), and run from a folder outside the tree: `gtnpipe devices list` (every
shipped profile), `gtnpipe devices show raspberry-pi-4`, `gtnpipe bench ARTIFACT` on a host artifact this module
assembles from the deploy fixture's trained student, and the error for an unknown profile. Then the data
locations in this checkout: shipped profiles, recipes and tables; the user's data directory searched first.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import platformdirs
import pytest
from installed_wheel import REFERENCE_IMAGES, REPO, SETUPTOOLS, InstalledWheel

from gtnpipe.config import resources
from gtnpipe.config.profiles import known_profiles, load_profile, profiles_dir
from gtnpipe.config.recipes import known_recipes, recipes_dir
from gtnpipe.devices.latency_table import (
    shipped_tables_dir,
    table_dirs,
    table_path,
    table_write_path,
    user_tables_dir,
)
from gtnpipe.errors import ConfigError

# --- the package list the wheel is built from ----------------------------------------------------------------


def test_every_package_under_gtnpipe_is_listed_for_the_wheel() -> None:
    """pyproject lists packages by hand (package-dir maps the data folders in, which packages.find cannot see):
    a package missing there is missing from the wheel while the editable install still imports it."""
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "gtnpipe").rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    unlisted = sorted(found - listed)
    assert not unlisted, f"add {unlisted} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    for package in listed - found:  # the data folders, mapped from the top of the repository
        assert (REPO / SETUPTOOLS["package-dir"][package]).is_dir(), package


# --- the installed wheel -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_installed_wheel_lists_shows_and_benchmarks(installed: InstalledWheel, host_artifact: Path) -> None:
    # the wheel itself holds every shipped profile, table and recipe as package data
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
    for folder, pattern in (("device_profiles", "*.toml"), ("device_profiles/tables", "*/*.json"), ("recipes", "*.toml")):
        shipped = {p.relative_to(REPO / folder).as_posix() for p in (REPO / folder).glob(pattern)}
        assert shipped and {f"gtnpipe/{folder}/{n}" for n in shipped} <= names, folder

    installed.wait()
    probe = installed.run("python", "-c", "import gtnpipe, importlib.util, json; print(json.dumps([gtnpipe.__file__, "
                          "importlib.util.find_spec('torch') is None, importlib.util.find_spec('onnxruntime') is not None]))")
    assert probe.returncode == 0, probe.stderr
    location, no_torch, has_ort = json.loads(probe.stdout)
    assert Path(location).is_relative_to(installed.venv) and no_torch and has_ort  # the wheel's code, not the checkout's

    listed = installed.run("gtnpipe", "devices", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    devices = json.loads(listed.stdout)
    assert [d["name"] for d in devices] == known_profiles()
    assert {d["name"] for d in devices if d["measured_table"]} == {p.parent.name for p in shipped_tables_dir().glob("*/*.json")}

    shown = installed.run("gtnpipe", "devices", "show", "raspberry-pi-4", "--json")
    assert shown.returncode == 0, shown.stderr
    profile = load_profile("raspberry-pi-4")
    assert json.loads(shown.stdout) == {**json.loads(json.dumps(profile.to_dict())), "sha256": profile.sha256()}

    unknown = installed.run("gtnpipe", "devices", "show", "jetson-orin")
    assert unknown.returncode == 2
    assert f"known devices: {', '.join(known_profiles())}" in " ".join(unknown.stderr.split())

    bench = installed.run("gtnpipe", "bench", str(host_artifact), "--json", "--runs", "20", "--warmup", "2")
    # exit 3: a latency or memory budget missed on this (shared) machine; the checks below still hold
    assert bench.returncode in (0, 3), bench.stderr
    result = json.loads(bench.stdout)
    manifest = json.loads((host_artifact / "manifest.json").read_text())
    assert result["device_profile"] == "host" and result["latency"]["runs"] == 20
    assert result["runtime"] == {"name": "onnxruntime", "version": manifest["runtime"]["built_with"],
                                 "profile_range": ">=1.20,<2", "in_range": True}
    parity = result["parity"]
    assert parity["passed"] and parity["images"] == REFERENCE_IMAGES and parity["max_abs_diff"] <= 1e-4
    assert parity["torch_top1"] == pytest.approx(manifest["accuracy"]["torch_fp32_top1"], abs=1e-9)
    assert result["model_size_mb"] == pytest.approx(manifest["predicted"]["model_size_mb"], rel=1e-12)
    assert result["verdict"]["checks"]["parity"]["ok"] and result["verdict"]["checks"]["model_size_mb"]["ok"]
    assert (host_artifact / "bench.json").is_file()
    # the recipes load from the installed package too
    recipes = installed.run("python", "-c", "import json; from gtnpipe.config.recipes import known_recipes, recipes_dir; "
                            "print(json.dumps([known_recipes(), str(recipes_dir())]))")
    assert recipes.returncode == 0, recipes.stderr
    names, folder = json.loads(recipes.stdout)
    assert names == known_recipes() and Path(folder).is_relative_to(installed.venv)
    print(f"wheel test seconds: {installed.seconds}")


# --- where data is found (this checkout: an editable install) ----------------------------------------------------


def test_a_checkout_reads_the_top_level_folders() -> None:
    """The folders users edit are the ones read: no copy inside gtnpipe/ to drift from them."""
    assert profiles_dir() == REPO / "device_profiles" and recipes_dir() == REPO / "recipes"
    assert shipped_tables_dir() == REPO / "device_profiles" / "tables"


def test_missing_shipped_data_is_an_error_naming_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site-packages" / "gtnpipe"  # an install without the data: no folder in it, no checkout above
    package.mkdir(parents=True)
    monkeypatch.setattr(resources.resources, "files", lambda _: package)
    with pytest.raises(ConfigError, match=r"shipped device profiles are missing .*site-packages/gtnpipe/device_profiles"):
        known_profiles()


def test_user_data_dir_is_the_platform_one_unless_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(resources.DATA_DIR_ENV, raising=False)
    assert resources.user_data_dir() == platformdirs.user_data_path("gtnpipe", appauthor=False)
    monkeypatch.setenv(resources.DATA_DIR_ENV, str(tmp_path))
    assert resources.user_data_dir() == tmp_path and user_tables_dir() == tmp_path / "tables"


def test_the_users_table_is_found_before_the_shipped_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gtnpipe.space.spaces import TaskShape

    monkeypatch.setenv(resources.DATA_DIR_ENV, str(tmp_path))
    fmnist, colour = TaskShape(1, (28, 28), 10), TaskShape(3, (224, 224), 1000)
    name = "host/mbv3-28_1x28x28_10cls.json"
    shipped = shipped_tables_dir() / name
    assert shipped.is_file() and table_dirs() == (tmp_path / "tables", shipped_tables_dir())
    assert table_path("host", "mbv3-28", fmnist) == shipped
    # keyed by space and input: the 28-px table is never the table for another input or space
    assert table_path("host", "mbv3-224", colour) == tmp_path / "tables" / "host/mbv3-224_3x224x224_1000cls.json"
    assert not table_path("host", "mbv3-28", TaskShape(3, (28, 28), 10)).exists()
    # calibration writes to the user's folder, never into the package, even while a shipped table exists
    assert table_write_path("host", "mbv3-28", fmnist) == tmp_path / "tables" / name
    assert table_write_path("host", "mbv3-28", fmnist, tmp_path / "elsewhere") == tmp_path / "elsewhere" / name
    (tmp_path / "tables" / "host").mkdir(parents=True)
    shutil.copyfile(shipped, tmp_path / "tables" / name)
    assert table_path("host", "mbv3-28", fmnist) == tmp_path / "tables" / name
    # no table anywhere: the path where one would be written, which the cost model reports as missing
    missing = table_path("jetson-nano", "mbv3-28", fmnist)
    assert missing == tmp_path / "tables" / "jetson-nano/mbv3-28_1x28x28_10cls.json" and not missing.exists()
    assert table_path("host", "mbv3-28", fmnist, tmp_path / "elsewhere") == tmp_path / "elsewhere" / name


def test_the_cost_model_names_both_folders_when_no_table_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gtnpipe.deploy.backends import backend_class
    from gtnpipe.devices.cost import CostModel, SizeFactor
    from gtnpipe.space.spaces import TaskShape, get_space

    monkeypatch.setenv(resources.DATA_DIR_ENV, str(tmp_path))
    trt = backend_class("tensorrt")  # the registry lists it without TensorRT or torch installed
    model = CostModel(load_profile("jetson-nano"), get_space("mbv3-28"), TaskShape(1, (28, 28), 10),
                      int8_size=SizeFactor(trt.int8_size_factor, trt.int8_size_factor_source))
    assert model.table is None
    assert (f"no measured table for jetson-nano at mbv3-28 1x28x28 (10 classes) in {tmp_path / 'tables'} or "
            f"{shipped_tables_dir()}; measure one on the device: gtnpipe latency-table --device jetson-nano --space mbv3-28 "
            "--input 1x28x28 --classes 10") in model.table_note
