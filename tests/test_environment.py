"""Process-wide settings: set where a process starts (the gtnpipe command), never on import; checked for API users."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import HANG_TIMEOUT_S

from gtnpipe.environment import (
    ONEDNN_CAP,
    QUIET_CONVERTER,
    WEIGHTS_ONLY,
    apply_process_defaults,
    missing_process_defaults,
    process_defaults,
)

ZEN4 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512dq avx512_bf16\n"
ZEN3 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2\n"
XEON = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n"


def test_the_onednn_cap_is_for_amd_cpus_with_avx512_only() -> None:
    always = {WEIGHTS_ONLY[0]: "1", QUIET_CONVERTER[0]: "n"}
    assert process_defaults(ZEN4) == {**always, ONEDNN_CAP[0]: "AVX2"}
    assert process_defaults(ZEN3) == process_defaults(XEON) == process_defaults("") == always


def test_a_users_own_setting_wins_and_what_an_api_process_lacks_is_named() -> None:
    env: dict[str, str] = {ONEDNN_CAP[0]: "AVX512_CORE", QUIET_CONVERTER[0]: "y"}
    assert missing_process_defaults(env, ZEN4) == [
        "TORCH_FORCE_WEIGHTS_ONLY_LOAD is not set: start Python with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 in the environment "
        "(the gtnpipe command sets it; without it loading a .pt2 teacher file could run Python code)"]
    assert missing_process_defaults({**env, WEIGHTS_ONLY[0]: "1"}, ZEN4) == []


def test_importing_gtnpipe_sets_nothing_and_the_command_sets_both() -> None:
    """Import (the API, training included) changes no environment variable; `gtnpipe` sets them before any work."""
    env = {k: v for k, v in os.environ.items() if k not in (ONEDNN_CAP[0], WEIGHTS_ONLY[0], QUIET_CONVERTER[0])}
    code = ("import os, gtnpipe.api, gtnpipe.training.train, gtnpipe.models.external\n"
            f"print({ONEDNN_CAP[0]!r} in os.environ, {WEIGHTS_ONLY[0]!r} in os.environ)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout.split() == ["False", "False"], done.stderr
    code = ("import os, sys\nfrom gtnpipe.cli import main\nsys.argv = ['gtnpipe', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(os.environ.get({WEIGHTS_ONLY[0]!r}), os.environ.get({ONEDNN_CAP[0]!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["1", process_defaults().get(ONEDNN_CAP[0], "None")]


def test_apply_sets_only_what_is_missing() -> None:
    mine = {k: v for k, v in os.environ.items() if k != WEIGHTS_ONLY[0]} | {ONEDNN_CAP[0]: "AVX512_CORE"}
    mine.pop(QUIET_CONVERTER[0], None)
    assert apply_process_defaults(mine) == {WEIGHTS_ONLY[0]: "1", QUIET_CONVERTER[0]: "n"}
    assert mine[ONEDNN_CAP[0]] == "AVX512_CORE"
