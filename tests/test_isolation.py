"""The suite never reads or writes the user's own gtnpipe folders (tests/conftest.py), whatever the fixture's scope."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import platformdirs
import pytest
from conftest import HANG_TIMEOUT_S, TESTS

from gtnpipe.cache import default_cache_dir
from gtnpipe.config.resources import DATA_DIR_ENV, user_data_dir


@pytest.fixture(scope="module")
def dirs_a_module_fixture_sees() -> tuple[Path, Path]:
    """What a module-scoped build fixture would use: it runs before any function-scoped fixture."""
    return default_cache_dir(), user_data_dir()


def test_a_module_scoped_fixture_sees_no_real_folder(dirs_a_module_fixture_sees: tuple[Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the folders gtnpipe uses when nothing points it elsewhere (a make demo writes its host latency table there)
    for name in ("GTNPIPE_CACHE", DATA_DIR_ENV, "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    defaults = {default_cache_dir(), user_data_dir(), platformdirs.user_data_path("gtnpipe", appauthor=False)}
    cache, data = dirs_a_module_fixture_sees
    assert cache not in defaults and data not in defaults
    assert cache.is_dir() and data.is_dir()


def test_each_test_still_gets_fresh_folders(dirs_a_module_fixture_sees: tuple[Path, Path]) -> None:
    assert (default_cache_dir(), user_data_dir()) != dirs_a_module_fixture_sees
    assert not any(default_cache_dir().iterdir()) and not any(user_data_dir().iterdir())


# Run by a pytest in a subprocess, with this suite's conftest, against "real" folders made for the test.
_WRITES_INTO_THE_REAL_DATA_DIR = """
import os
from pathlib import Path

def test_that_writes_where_it_should_not():
    target = Path(os.environ["REAL_TABLE"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{}")
"""


def test_a_run_that_changes_a_real_folder_fails(tmp_path: Path) -> None:
    real_cache, real_data = tmp_path / "real-cache", tmp_path / "real-data"
    (real_cache / "models").mkdir(parents=True)
    real_data.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "test_scratch.py").write_text(textwrap.dedent(_WRITES_INTO_THE_REAL_DATA_DIR))
    env = {**os.environ, "GTNPIPE_CACHE": str(real_cache), DATA_DIR_ENV: str(real_data),
           "REAL_TABLE": str(real_data / "tables" / "host.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                           str(scratch / "test_scratch.py")], capture_output=True, text=True, cwd=scratch, env=env,
                          timeout=HANG_TIMEOUT_S)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "1 passed" in done.stdout  # the test itself passed: the session failed on what it left behind
    assert f"{real_data}: added tables" in done.stdout and f"{real_data}: added tables/host.json" in done.stdout
    assert str(real_cache) not in done.stdout.split("changed the user's own gtnpipe folders")[1]
