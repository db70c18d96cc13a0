"""TensorRT (NVIDIA GPUs, Jetson): the backend, what a build ships, and `python -m gtnpipe.deploy.backends.tensorrt`.

What runs where:
- `TensorRtBackend.build` (host) always runs the offline ONNX check of `gtnpipe.deploy.backends.tensorrt_onnx` (which
  needs only the `onnx` package) and ships `model.onnx`, and for INT8 the calibration images (`calibration.npy`).
  Where TensorRT and Polygraphy are importable it also builds `model-<precision>.engine` and its sidecar
  (`tensorrt_engine`); else where `trtexec` is on PATH it builds fp32/fp16 engines with that; else (this machine) it
  ships the ONNX with the exact command that builds the engine on the device. An engine only runs on the GPU model
  and TensorRT version that built it, which is why a host without TensorRT leaves the engine to the device.
- `TensorRtBackend.load` (device) runs an `.engine`, or builds one next to an `.onnx` first, reused while its sidecar
  matches the ONNX, TensorRT and GPU (`tensorrt_engine`); `tensorrt_runner` runs it. Neither imports torch or onnx,
  nor `tensorrt_onnx`.
- `python -m gtnpipe.deploy.backends.tensorrt check|build ...` is the ONNX check and the engine build from a shell.

Caveat for the Jetson Nano profile: JetPack 4.6 ships TensorRT 8.0/8.2 with Python bindings for its system Python 3.6
only, and Polygraphy needs TensorRT 8.5+; `trtexec` (/usr/src/tensorrt/bin/trtexec) builds and times engines there.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gtnpipe.deploy.backends import Backend, BuildResult, ExportedModel, calibration_batches
from gtnpipe.deploy.backends.tensorrt_engine import (
    CALIBRATION_CACHE_FILE,
    CALIBRATION_FILE,
    ONNX_FILE,
    PRECISIONS,
    build_engine,
    engine_file_name,
    engine_for_onnx,
    import_polygraphy_trt,
    import_tensorrt,
    read_sidecar,
    sidecar_path,
)
from gtnpipe.deploy.backends.tensorrt_runner import TrtRunner, open_engine
from gtnpipe.errors import BackendBuildError, BackendUnavailable, ConfigError
from gtnpipe.fsutil import atomic_write, atomic_write_bytes

__all__ = [
    "CALIBRATION_CACHE_FILE",
    "CALIBRATION_FILE",
    "ONNX_FILE",
    "TensorRtBackend",
    "TrtRunner",
    "build_engine",
    "engine_build_command",
    "engine_file_name",
    "engine_for_onnx",
    "main",
]

TRTEXEC_TIMEOUT_S = 3600  # engine builds on a Jetson Nano take minutes per model; a hang still ends
_PORTABILITY = (f"runs only on this GPU model with this TensorRT version; elsewhere load {ONNX_FILE}, which builds "
                "an engine there")


def _optional_tensorrt() -> Any | None:
    """The tensorrt module, or None where it is not usable here."""
    try:
        return import_tensorrt()
    except BackendUnavailable:
        return None


def _trtexec_path() -> str | None:
    """trtexec's path: on PATH, or where JetPack and NVIDIA's packages put it (not on PATH by default)."""
    found = shutil.which("trtexec")
    if found:
        return found
    default = Path("/usr/src/tensorrt/bin/trtexec")
    return str(default) if default.is_file() else None


def engine_build_command(precision: str, *, onnx_file: str = ONNX_FILE) -> list[str]:
    """The trtexec command that builds the engine from the artifact's ONNX (run in the artifact folder).

    Its builder flags are those of `tensorrt_engine.builder_flags`: fp32 with TF32 off (--noTF32), int8 with FP16
    fallback. INT8 reads the calibration cache that a calibrated build (`engine_for_onnx`, i.e. `load` or
    `python -m gtnpipe.deploy.backends.tensorrt build`) writes: trtexec cannot calibrate from images, and `--int8`
    without `--calib` uses placeholder scales, whose accuracy means nothing. trtexec writes no sidecar, so `load` of
    the ONNX rebuilds such an engine; time it with `trtexec --loadEngine=...` instead.
    """
    command = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file_name(precision)}"]
    if precision == "fp32":
        command.append("--noTF32")
    elif precision == "fp16":
        command.append("--fp16")
    elif precision == "int8":
        command += ["--int8", "--fp16", f"--calib={CALIBRATION_CACHE_FILE}"]
    return command


class TensorRtBackend(Backend):
    runtime = "tensorrt"
    precisions = PRECISIONS
    extra = None  # JetPack / NVIDIA's packages: no installable build reaches PyPI's CPU machines
    sdk_modules = ()  # build ships ONNX without TensorRT; load() and version() need it
    # a user's graph folded first: old parsers (8.0 on the Nano) refuse the integer shape arithmetic exporters write
    fold_constants = True
    packages = ("tensorrt", "polygraphy", "onnx")
    suffixes = (".onnx", ".npy", ".engine", ".cache")  # the ONNX it ships, INT8 calibration images and cache, the engine
    # A guess, not a measurement: the engine is built on the device (no TensorRT here), so its INT8 size was never
    # measured against the formula; the other runtimes' measured factors are 1.40-2.27
    int8_size_factor = 1.0
    int8_size_factor_source = "guess: TensorRT INT8 engines are built on the device and were never measured here"
    # TensorRT developer guide, "INT8 Calibration Using Python": "about 500 images are sufficient for calibrating
    # ImageNet classification networks". The build uses whole batches of the device's batch size and its notes say
    # how many it used, and that it got fewer where it did.
    calibration_images: ClassVar[int] = 500

    def version(self) -> str:
        return str(import_tensorrt().__version__)

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
        """Check the export, ship it as model.onnx, and build the engine where TensorRT or trtexec is here."""
        from gtnpipe.deploy.backends.tensorrt_onnx import require_onnx_for_tensorrt, tensorrt_version_for_opset

        self.check_precision(precision)
        trt = _optional_tensorrt()
        trt_version = str(trt.__version__) if trt is not None else tensorrt_version_for_opset(inputs.max_onnx_opset)
        require_onnx_for_tensorrt(inputs.onnx_path, max_opset=inputs.max_onnx_opset, trt_version=trt_version)
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_file = out_dir / ONNX_FILE
        atomic_write_bytes(onnx_file, Path(inputs.onnx_path).read_bytes())
        files = [ONNX_FILE]
        notes: dict[str, Any] = {"onnx_checked_for": f"TensorRT {trt_version}, opset <= {inputs.max_onnx_opset}"}
        if precision == "int8":
            notes.update(self._ship_calibration(inputs, out_dir))
            files.append(CALIBRATION_FILE)
        engine_name = engine_file_name(precision)
        why_not = "TensorRT not installed here"
        if trt is not None:
            try:
                import_polygraphy_trt()
            except BackendUnavailable as err:  # Polygraphy missing, or a TensorRT older than it supports
                why_not = str(err)
            else:
                engine_for_onnx(onnx_file, precision, rebuild=True)
                files += [engine_name, sidecar_path(out_dir / engine_name).name]
                if precision == "int8" and (out_dir / CALIBRATION_CACHE_FILE).is_file():
                    files.append(CALIBRATION_CACHE_FILE)
                built = read_sidecar(out_dir / engine_name) or {}
                if precision == "int8":
                    notes["calibration_images"] = built.get("calibration_images")  # what the engine really calibrated on
                notes.update(engine=f"built by TensorRT {trt.__version__} on {built.get('gpu_name')} "
                                    f"({built.get('built_with')})", engine_builder="polygraphy",
                             engine_portability=_PORTABILITY)
                return BuildResult(engine_name, tuple(files), notes)
        trtexec = _trtexec_path()
        if trtexec is not None and precision != "int8":
            self._trtexec(trtexec, precision, out_dir)
            files.append(engine_name)
            notes.update(engine=f"built by {trtexec}", engine_builder="trtexec",
                         engine_build_command=shlex.join(engine_build_command(precision)),
                         engine_portability=_PORTABILITY)
            return BuildResult(engine_name, tuple(files), notes)
        # No engine builder here (or int8 with trtexec only, which cannot calibrate from images): the device builds
        # the engine from model.onnx when `load` (gtnpipe bench) first runs it, or by the command below.
        if trtexec is not None:
            why_not = "trtexec cannot calibrate INT8 from images"
        notes["engine"] = f"not built: {why_not}; gtnpipe bench builds it on the device"
        notes["engine_file"] = engine_name
        if precision == "int8":
            notes["engine_build_command"] = shlex.join(
                ["python", "-m", "gtnpipe.deploy.backends.tensorrt", "build", ONNX_FILE, "--precision", "int8"])
        else:
            notes["engine_build_command"] = shlex.join(engine_build_command(precision))
        return BuildResult(ONNX_FILE, tuple(files), notes, deployed_format=False)

    def _ship_calibration(self, inputs: ExportedModel, out_dir: Path) -> dict[str, Any]:
        """Write calibration.npy: whole batches of up to `calibration_images` of the given images; notes on the count."""
        batch = inputs.input_shape[0]
        images = np.concatenate(calibration_batches(inputs, max_images=self.calibration_images))
        with atomic_write(out_dir / CALIBRATION_FILE) as handle:
            np.save(handle, np.ascontiguousarray(images, dtype=np.float32))
        used, wanted, given = len(images), self.calibration_images, len(inputs.calibration)
        notes: dict[str, Any] = {
            "calibration_images": used, "calibration_images_wanted": wanted,
            "calibration": (f"{CALIBRATION_FILE} holds {used} training images; the calibrated build writes "
                            f"{CALIBRATION_CACHE_FILE}, which '{shlex.join(engine_build_command('int8'))}' reads. "
                            "trtexec --int8 without --calib uses placeholder scales (accuracy not representative), "
                            "so it is never used")}
        if used < wanted:
            cut = f", and whole batches of {batch} of them make {used}" if used < min(given, wanted) else ""
            notes["calibration_shortfall"] = (f"TensorRT calibration wants {wanted} images but was given {given}{cut}: "
                                              f"{used} are used. Pass backend.calibration_images training images to get "
                                              "all of them")
        return notes

    @staticmethod
    def _trtexec(trtexec: str, precision: str, out_dir: Path) -> None:
        command = [trtexec, *engine_build_command(precision)[1:]]
        try:
            done = subprocess.run(command, cwd=out_dir, capture_output=True, text=True, timeout=TRTEXEC_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise BackendBuildError(f"'{shlex.join(command)}' ran over {TRTEXEC_TIMEOUT_S} s in {out_dir}: check the GPU "
                                    "(nvidia-smi / tegrastats) and run it by hand to see where it stops") from err
        if done.returncode != 0 or not (out_dir / engine_file_name(precision)).is_file():
            tail = (done.stdout + done.stderr)[-2000:]
            failure = subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
            raise BackendBuildError(f"'{shlex.join(command)}' failed in {out_dir} (exit {done.returncode}):\n{tail}\n"
                                    f"Check the model with 'python -m gtnpipe.deploy.backends.tensorrt check "
                                    f"{out_dir / ONNX_FILE}'") from failure

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> TrtRunner:
        """A runner for an `.engine`, or for an `.onnx` after building (or reusing) its engine beside it.

        `threads` does not apply: the GPU runs the model, the CPU thread only copies and waits.
        """
        trt = import_tensorrt()
        model_path = Path(model_path)
        if model_path.suffix == ".onnx":
            self.check_precision(precision)
            engine_path = engine_for_onnx(model_path, precision)
            runner = open_engine(engine_path)
            if runner is None:  # a fresh stamp on a file TensorRT refuses (damaged): build it again
                engine_path = engine_for_onnx(model_path, precision, rebuild=True)
                runner = open_engine(engine_path)
        else:
            engine_path = model_path
            runner = open_engine(engine_path)
        if runner is None:
            built = read_sidecar(engine_path) or {}
            origin = (f" (built by TensorRT {built.get('tensorrt_version')} on {built.get('gpu_name')})"
                      if built else "")
            raise ConfigError(f"TensorRT {trt.__version__} cannot load {engine_path}{origin}: engines run only on the GPU "
                              f"model and TensorRT version that built them; load the artifact's {ONNX_FILE} instead, "
                              "which builds an engine on this device")
        return runner


# ---------------------------------------------------------------------------------------------
# python -m gtnpipe.deploy.backends.tensorrt

def main(argv: Sequence[str] | None = None) -> int:
    """`check MODEL.onnx [--max-opset N] [--trt-version V]` or `build MODEL.onnx --precision P` (on the device)."""
    parser = argparse.ArgumentParser(prog="python -m gtnpipe.deploy.backends.tensorrt",
                                     description="Check an ONNX export for TensorRT, or build its engine on the device.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="will this ONNX parse in TensorRT? (needs only the onnx package)")
    check.add_argument("onnx", type=Path)
    check.add_argument("--max-opset", type=int, default=13, help="the profile's runtime.max_onnx_opset (default 13)")
    check.add_argument("--trt-version", default=None,
                       help="TensorRT version to check against (default: the oldest that reads --max-opset)")
    build = commands.add_parser("build", help="build model-<precision>.engine beside the ONNX (needs TensorRT, Polygraphy)")
    build.add_argument("onnx", type=Path)
    build.add_argument("--precision", choices=TensorRtBackend.precisions, default="fp16")
    build.add_argument("--rebuild", action="store_true", help="build even if the engine's sidecar says it is fresh")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            from gtnpipe.deploy.backends.tensorrt_onnx import (
                _summary,
                check_onnx_for_tensorrt,
                tensorrt_version_for_opset,
            )

            version = args.trt_version or tensorrt_version_for_opset(args.max_opset)
            problems = check_onnx_for_tensorrt(args.onnx, max_opset=args.max_opset, trt_version=version)
            print(_summary(args.onnx, problems, max_opset=args.max_opset, trt_version=version))
            return 1 if problems else 0
        print(engine_for_onnx(args.onnx, args.precision, rebuild=args.rebuild))
        return 0
    except (ConfigError, BackendUnavailable, BackendBuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


BACKEND = TensorRtBackend
