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
    section = section[:next((i for i, line in enumerate(section) if line.startswith("[")), len(section))]
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
    (HOST_TEXT.replace("[hardware]\n", "[hardware]\nturbo = true\n"),
     r"unknown key 'hardware.turbo'; allowed keys in \[hardware\]: layer_overhead_us"),
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


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_has_budgets_the_pool_can_meet_in_every_space(name: str) -> None:
    """The demo's 28-px budgets refused every 64-px and 224-px student; [[space_budgets]] fit each space: its smallest
    student meets them (as the cost model predicts it here) and its largest does not, so search has to choose."""
    from gtnpipe.space.pool import NOMINAL_TASKS
    from gtnpipe.space.spaces import SPACES
    from gtnpipe.stages.search import budgeted_profile, cost_model

    for space in SPACES.values():
        profile = budgeted_profile(name, space.name)
        model = cost_model(profile, space, NOMINAL_TASKS[space.name])
        assert model.estimate(space.smallest()).violations(profile.budgets) == [], (name, space.name)
        assert model.estimate(space.largest()).violations(profile.budgets), (name, space.name)


def test_space_budgets_replace_only_what_they_give_and_are_checked(tmp_path: Path) -> None:
    from gtnpipe.stages.search import budgeted_profile, space_of_input

    host = load_profile("host")
    wide = host.for_space("mbv3-224")
    assert wide.budgets.model_size_mb == 20.0 and wide.budgets.max_accuracy_drop_points == host.budgets.max_accuracy_drop_points
    assert host.for_space("mbv3-28") == host  # no entry: the [budgets] as written
    assert space_of_input((48, 192)) == "mbv3-32" and space_of_input((224, 224)) == "mbv3-224"
    assert space_of_input((8, 8)) is None
    assert budgeted_profile("host", "mbv3-32", (("latency_ms_p90", 9.0),)).budgets.latency_ms_p90 == 9.0
    bad = _write(tmp_path, HOST_TEXT + '\n[[space_budgets]]\nspace = "mbv3-64"\nlatency_ms_p90 = 1.0\n', stem="host")
    with pytest.raises(ConfigError, match=r"names unknown space\(s\) mbv3-64; the spaces are mbv3-28, mbv3-32, mbv3-224"):
        budgeted_profile(bad, "mbv3-32")
    empty = _write(tmp_path, HOST_TEXT + '\n[[space_budgets]]\nspace = "mbv3-28"\n', stem="host")
    with pytest.raises(ConfigError, match="space_budgets for 'mbv3-28' give no budget"):
        load_profile(empty)


def test_budget_overrides_are_checked_like_the_profile() -> None:
    from gtnpipe.config.profiles import parse_budget, with_budgets

    host = load_profile("host")
    assert parse_budget("latency_ms_p90=2.5") == ("latency_ms_p90", 2.5)
    assert with_budgets(host, (("latency_ms_p90", 2.5),)).budgets.latency_ms_p90 == 2.5
    for text in ("latency_ms_p90", "latency_ms_p90=fast", "=1"):
        with pytest.raises(ConfigError, match="give NAME=VALUE"):
            parse_budget(text)
    with pytest.raises(ConfigError, match="--budget latency_p90: not a budget; the budgets are latency_ms_p90"):
        with_budgets(host, (("latency_p90", 1.0),))
    with pytest.raises(ConfigError, match=r"--budget model_size_mb=-1: 'model_size_mb' must be a finite number > 0"):
        with_budgets(host, (("model_size_mb", -1.0),))
