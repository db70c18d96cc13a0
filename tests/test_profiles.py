"""Device profiles: every shipped one loads; each kind of bad file is refused with a specific message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gtnpipe.config.profiles import PRECISIONS, DeviceProfile, known_profiles, load_profile, profiles_dir
from gtnpipe.deploy.backends import runtimes
from gtnpipe.errors import ConfigError

SHIPPED = known_profiles()
HOST_TEXT = (profiles_dir() / "host.toml").read_text()


def test_the_required_devices_ship() -> None:
    assert {"jetson-nano", "raspberry-pi-4", "raspberry-pi-5", "intel-nuc", "android-pixel", "x86-server",
            "host"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile) and profile.name == name
    assert profile.runtime.name in runtimes() and set(profile.precisions) <= set(PRECISIONS)
    assert profile.precision == profile.precisions[0]
    # every [hardware] number carries a source: a comment on its line or on the line above
    lines = (profiles_dir() / f"{name}.toml").read_text().splitlines()
    section = lines[lines.index("[hardware]") + 1:]
    for i, line in enumerate(section):
        if "=" in line and not line.startswith("#"):
            assert "#" in line or section[i - 1].startswith("#"), f"{name}: no source comment for {line!r}"


def test_load_by_path_and_hash_ignores_formatting(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text("# a comment\n" + HOST_TEXT.replace(" = ", "="))
    assert load_profile(path).sha256() == load_profile("host").sha256()


def _write(tmp_path: Path, text: str, stem: str = "host") -> Path:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text)
    return path


def _replace(pattern: str, new: str) -> str:
    text, n = re.subn(pattern, new, HOST_TEXT, count=1, flags=re.MULTILINE)
    assert n == 1, pattern
    return text


@pytest.mark.parametrize(("text", "message"), [
    ("turbo = true\n" + HOST_TEXT, r"unknown key 'turbo'; allowed keys: batch_size, budgets"),
    (HOST_TEXT + "\nturbo = true\n", r"unknown key 'hardware.turbo'; allowed keys in \[hardware\]: layer_overhead_us"),
    (_replace(r"^latency_ms_p90 = .*$", 'latency_ms_p90 = "fast"'), r"'budgets.latency_ms_p90' must be a number, got 'fast'"),
    (_replace(r"^latency_ms_p90 = .*$", "latency_ms_p90 = -1.0"),
     r"\[budgets\] 'latency_ms_p90' must be a finite number > 0, got -1.0"),
    (_replace(r"^peak_memory_mb = .*$", "peak_memory_mb = 0"), r"'peak_memory_mb' must be a finite number > 0, got 0.0"),
    (_replace(r'^name = "onnxruntime"', 'name = "coreml"'),
     r"'name' = 'coreml' is not allowed; allowed values: 'onnxruntime', 'openvino', 'tensorrt', 'tflite' \(the "
     r"runtimes of gtnpipe's backend registry\)"),
    (_replace(r"^precisions = .*$", 'precisions = ["fp32", "bf16"]'),
     r"'precisions\[1\]' = 'bf16' is not allowed; allowed values: 'fp32', 'fp16', 'int8'"),
    (_replace(r"^precisions = .*$", 'precisions = ["fp16"]'),
     r"precision 'fp16' is allowed but \[hardware\] gives no 'peak_gflops_fp16'"),
    (_replace(r"^threads = .*$", "threads = 0"), r"'threads' must be >= 1, got 0"),
    (_replace(r"^threads = .*$", "threads = 1.5"), r"'threads' must be int, got float 1.5"),
    (_replace(r'^version = .*$', 'version = "newest"'), r"'version' = 'newest' is not a version range"),
    (_replace(r"^max_onnx_opset = .*$", "max_onnx_opset = 99"), r"'max_onnx_opset' must be an ONNX opset between 7 and 30"),
    (_replace(r"^\[budgets\]\n", "[budgets]\nlatency_ms_p50 = 1.0\n"), r"unknown key 'budgets.latency_ms_p50'"),
    (_replace(r"^latency_margin_pct = .*$", "latency_margin_pct = 100.0"),
     r"'latency_margin_pct' must be a percentage in \[0, 100\), got 100.0"),
    (_replace(r"^batch_size = .*\n", ""), r"missing required key 'batch_size'"),
    ("name = [", r"not valid TOML"),
])
def test_invalid_profile_is_refused_with_a_specific_error(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_name_must_match_the_file_stem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'name' = 'host' must equal the file name 'my-board'"):
        load_profile(_write(tmp_path, HOST_TEXT, stem="my-board"))


def test_unknown_device_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown device 'jetson-orin'; known devices: android-pixel, host") as info:
        load_profile("jetson-orin")
    assert f"known devices: {', '.join(SHIPPED)} (or pass the path" in str(info.value)  # every shipped one, nothing else


def test_shipped_profiles_are_the_top_level_folder() -> None:
    """An editable install reads the repository's device_profiles/ (the wheel carries a copy: tests/test_wheel.py)."""
    assert profiles_dir() == Path(__file__).resolve().parents[1] / "device_profiles"
    assert sorted(p.stem for p in profiles_dir().glob("*.toml")) == SHIPPED
