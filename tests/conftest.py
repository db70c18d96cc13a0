from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from gtnpipe.cache import default_cache_dir
from gtnpipe.config.resources import DATA_DIR_ENV, user_data_dir
from gtnpipe.data.datasets import Dataset, load_dataset
from gtnpipe.environment import apply_process_defaults

if TYPE_CHECKING:  # imported where used: they import this module
    from installed_wheel import InstalledWheel
    from sshd import LocalSshd

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "data" / "tiny.toml"
DEPLOY_RECIPE = TESTS / "data" / "deploy.toml"

# The one hang guard of the suite: pytest-timeout's limit per test (setup included), and the limit on any one
# subprocess or wait inside a test. Not a speed target (those are benchmarks: bench/). The slowest test,
# tests/test_build.py's first (its fixture builds host from an empty cache), took 540 s on 2 cores shared with
# other jobs (600 s timed it out once); past 15 min something is stuck. `--timeout N` or PYTEST_TIMEOUT override it.
HANG_TIMEOUT_S = 900

# `slow` (make test-fast leaves these out): a test that trains, compiles (ONNX export, NNCF, LiteRT, OpenVINO
# conversion) or builds an artifact or wheel, or runs for more than ~10 s on 2 cores. Tests mark themselves; here,
# every test using one of these fixtures, directly or through another fixture, and the few tests below whose files
# say nothing of it yet.
SLOW_FIXTURES = frozenset({
    "deploy_case",  # trains the deploy recipe's student and exports it to ONNX
    "tiny_onnx",  # tests/test_cli_progress.py: an ONNX export, then NNCF quantization in the test
    "host_kit",  # tests/test_calibrate.py: a calibration kit, one ONNX export per unit of the space
    "host_build",  # tests/test_build.py: a whole `gtnpipe build`
    "installed",  # tests/test_wheel.py: builds the wheel and installs it in a fresh venv
    "compile_args",  # tests/test_compile_failures.py: the tests export a student and quantize it with NNCF
})
SLOW_TESTS = {  # node id (all its parametrisations) -> why; for its file's owner to move into a @pytest.mark.slow there
    "tests/test_cli.py::test_train_json_and_cache_hit": "trains the tiny recipe's smallest student",
}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # before pytest-timeout's own pytest_configure reads its setting: the ini file has none, this is the default
    if config.getoption("timeout", None) is None and not os.environ.get("PYTEST_TIMEOUT"):
        config.option.timeout = HANG_TIMEOUT_S
    # builds for host do not measure this machine's latency table on the way (a minute each, and every test has its
    # own data dir). Set for the whole session, not in a function fixture: module-scoped build fixtures run before
    # those. tests/test_calibrate.py turns it back on where it tests that.
    os.environ["GTNPIPE_CALIBRATE"] = "0"
    # what the gtnpipe command sets first thing (gtnpipe.environment): the suite is such a process too
    apply_process_defaults()
    _isolate_user_folders(config)


# The user's own gtnpipe folders: the cache (gtnpipe.cache.default_cache_dir: $GTNPIPE_CACHE, else ~/.cache/gtnpipe)
# and the user data directory (gtnpipe.config.resources.user_data_dir: $GTNPIPE_DATA_DIR, else platformdirs', where
# `make demo` and `gtnpipe latency-table` put this machine's latency tables). No test may read or write them: what
# they hold would change what a build finds (a host table there failed 2 tests of test_build.py after a make demo).
# They are pointed elsewhere for the whole session in pytest_configure, before collection and before any fixture
# (module- and session-scoped ones run before function-scoped ones, so a function fixture alone came too late), and
# again per test by _isolated_cache. XDG_DATA_HOME too: it moves platformdirs' user data directory on Linux, for a
# test that unsets GTNPIPE_DATA_DIR to check the platform default. HOME is left alone: gtnpipe reads it only when
# GTNPIPE_CACHE is unset, and pip (the wheel tests) and ssh (the remote tests) keep their cache and config there.
# Whatever changed in the real folders during the run (listing and mtimes) fails the session: pytest_sessionfinish.
USER_FOLDERS_KEY = pytest.StashKey[dict[str, object]]()


def _isolate_user_folders(config: pytest.Config) -> None:
    real = {"cache": default_cache_dir(), "user data": user_data_dir()}
    session = Path(tempfile.mkdtemp(prefix="gtnpipe-tests-"))
    for name, var in (("cache", "GTNPIPE_CACHE"), ("data", DATA_DIR_ENV), ("xdg-data", "XDG_DATA_HOME")):
        (session / name).mkdir()
        os.environ[var] = str(session / name)
    config.stash[USER_FOLDERS_KEY] = {"real": real, "before": {p: _listing(p) for p in real.values()},
                                      "session": session, "changes": []}


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` (root itself as "."), with its mtime and size; {} if root does not exist."""
    listing = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files] if folder == str(root) else [*dirs, *files]:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed while walked
                continue
            listing["." if name == "." else path.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size)
    return listing


def _changes(root: Path, before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return ([f"{root}: added {p}" for p in sorted(after.keys() - before.keys())]
            + [f"{root}: removed {p}" for p in sorted(before.keys() - after.keys())]
            + [f"{root}: modified {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def pytest_sessionfinish(session: pytest.Session) -> None:
    folders = session.config.stash.get(USER_FOLDERS_KEY, None)
    if folders is None:
        return
    before: dict[Path, dict[str, tuple[int, int]]] = folders["before"]  # type: ignore[assignment]
    changes = [c for root, listing in before.items() for c in _changes(root, listing, _listing(root))]
    folders["changes"] = changes
    if changes and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    changes: list[str] = config.stash.get(USER_FOLDERS_KEY, {}).get("changes", [])  # type: ignore[assignment]
    if changes:
        terminalreporter.section("the suite changed the user's own gtnpipe folders", sep="!", red=True, bold=True)
        terminalreporter.line("A test or fixture wrote outside its own folders (tests/conftest.py points GTNPIPE_CACHE "
                              "and GTNPIPE_DATA_DIR elsewhere; a gtnpipe run outside the suite at the same time "
                              "would show here too). Failing the run:")
        for change in changes[:50]:
            terminalreporter.line(f"  {change}")
        if len(changes) > 50:
            terminalreporter.line(f"  ... and {len(changes) - 50} more")


def pytest_unconfigure(config: pytest.Config) -> None:
    folders = config.stash.get(USER_FOLDERS_KEY, None)
    if folders is not None:
        shutil.rmtree(folders["session"], ignore_errors=True)  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SLOW_FIXTURES.intersection(fixtures) or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own empty cache and user data directory (the session's are shared by the wider fixtures)."""
    monkeypatch.setenv("GTNPIPE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GTNPIPE_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def fmnist_small() -> Dataset:
    """A small slice of the real Fashion-MNIST."""
    return load_dataset(val_size=256, train_subset=512, test_subset=256)


# Module names a device without the training stack lacks: subprocess tests block them to prove
# that `gtnpipe bench` and `gtnpipe devices` (and each backend's runner) need only the runtime.
TRAINING_STACK = ("torch", "nncf", "litert_torch", "ai_edge_quantizer", "onnxscript")


def block_imports_prelude(names: tuple[str, ...] = TRAINING_STACK) -> str:
    """Python source that makes importing any of `names` fail (put it before the code a subprocess runs)."""
    return ("import sys\n"
            "class _Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {set(names)!r}:\n"
            "            raise ImportError('blocked for this test: ' + name, name=name)\n"
            "sys.meta_path.insert(0, _Block())\n")


class DeployCase:
    """A trained tiny-recipe student, exported as every backend compiles it, with test images and torch's logits."""

    def __init__(self, root: Path) -> None:
        import torch

        from gtnpipe.deploy.export import Deployable, compile_inputs, to_unit_float
        from gtnpipe.pipeline import Workspace, load_trained

        ctx = Workspace.open(DEPLOY_RECIPE, cache_dir=root / "cache", progress=False)
        self.arch = ctx.space.smallest().id
        net = load_trained(ctx, self.arch)
        self.model = Deployable(net, ctx.data.mean, ctx.data.std).train(False)
        self.task = ctx.task
        self.inputs = compile_inputs(self.model, ctx.task, root / "export", batch_size=1, max_opset=17,
                                     calibration_uint8=ctx.data.train.x[:300])
        self.x_test = to_unit_float(ctx.data.test.x)  # 1000 images
        self.y_test = ctx.data.test.y
        with torch.no_grad():
            self.torch_logits = self.model(torch.from_numpy(self.x_test)).numpy()
        self.torch_top1 = float((self.torch_logits.argmax(1) == self.y_test).mean() * 100)
        # the parity and INT8 checks mean something only on a student that has learned
        assert self.torch_top1 > 60, f"the deploy fixture's student reaches only {self.torch_top1:.1f}% top-1"


@pytest.fixture(scope="session")
def deploy_case(tmp_path_factory: pytest.TempPathFactory) -> DeployCase:
    return DeployCase(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    """The wheel built here, being installed with [onnx] into a fresh venv (tests/installed_wheel.py): a device with
    gtnpipe and its runtime and no torch. Ask for it before `host_artifact`: pip installs while that trains."""
    from installed_wheel import InstalledWheel

    wheel = InstalledWheel(tmp_path_factory.mktemp("wheel"))
    yield wheel
    wheel.close()


@pytest.fixture(scope="session")
def host_artifact(deploy_case: DeployCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real host artifact folder (artifacts/host) for `gtnpipe bench`; tests copy it before changing anything."""
    from installed_wheel import make_host_artifact

    return make_host_artifact(deploy_case, tmp_path_factory.mktemp("artifact"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """A real OpenSSH server on 127.0.0.1 with throwaway keys (tests/sshd.py), stopped at the end of the session."""
    from sshd import LocalSshd

    server = LocalSshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def make_colour_folder(root: Path, *, classes: int = 3, per_class: int = 30, seed: int = 0,
                       sides_px: tuple[int, int] = (48, 120)) -> Path:
    """An ImageFolder of colour images of mixed sizes, PNG and JPEG, that a small network can learn: class k is a
    blob of hue k/classes on a noisy background, at a random place and size; a few images are grey. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([np.cos(2 * np.pi * (k / classes + j / 3)) for j in range(3)]) * 100 + 128
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(*sides_px, size=2))
            img = rng.normal(100, 30, size=(h, w, 3))
            cy, cx, r = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, rng.uniform(0.2, 0.35) * min(w, h)
            yy, xx = np.mgrid[:h, :w]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = hue
            pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
            if i % 7 == 3:  # grey ones in every split (the test split takes every 5th file)
                pil = pil.convert("L")
            pil.save(folder / (f"{i:03d}.jpg" if i % 2 else f"{i:03d}.png"), quality=95)
    return root


@pytest.fixture
def bump_version(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Pretend distribution `name` is installed at `version` (keys reads versions once per process: cleared here)."""
    from importlib import metadata

    from gtnpipe.stages import keys

    real = metadata.version

    def bump(name: str, version: str) -> None:
        monkeypatch.setattr(metadata, "version", lambda n: version if n == name else real(n))
        keys._installed_version.cache_clear()

    yield bump
    monkeypatch.undo()
    keys._installed_version.cache_clear()
