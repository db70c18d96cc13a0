"""Teachers gtnpipe did not train: a file (ONNX, TorchScript, torch.export .pt2) or a Python nn.Module.

Every such teacher takes what every gtnpipe artifact takes: float32 NCHW images in [0, 1] (its normalisation
inside; `teacher_from_module(..., input_mean=, input_std=)` adds it for a module that expects normalised images),
and returns (N, classes) logits. `as_training_teacher` adapts it to the training loop, which feeds teachers the
images normalised with the data's mean and std.

What loading a file trusts (README "Teacher files"):
- ONNX: nothing runs but ONNX Runtime's operators; the file is data.
- torch.export .pt2: its graph is JSON, its weights go through torch.load, which torch 2.13's export loader calls
  with weights_only=False for pickled constants; a .pt2 is loaded only in a process started with
  TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (gtnpipe.environment: the gtnpipe command sets it), which makes every torch.load
  restricted to tensors and plain containers (torch/serialization.py), so a .pt2 cannot run Python code while it
  loads. Running it runs only the aten operators in its graph.
- TorchScript: the archive holds TorchScript code, which the TorchScript interpreter runs (no Python), but the
  loader is not hardened against crafted files: pass only TorchScript files you would run yourself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gtnpipe.environment import WEIGHTS_ONLY, weights_only_forced
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import sha256_file

__all__ = ["TEACHER_FILE_KINDS", "ExternalTeacher", "HookedTeacher", "as_training_teacher", "load_external",
           "teacher_file", "teacher_from_module"]

# file suffix -> kind
TEACHER_FILE_KINDS = {".onnx": "onnx", ".pt2": "pt2", ".ts": "torchscript", ".pt": "torchscript", ".jit": "torchscript"}


@dataclass(frozen=True)
class ExternalTeacher:
    """A teacher from outside, as a cache key: its kind and content (the sha256 of the file, or of a module's class
    name and weights). `path` and `module` say where to find it and are not part of any key (`keyed: False`)."""

    kind: str  # "onnx" | "pt2" | "torchscript" | "module"
    sha256: str
    # a module's named submodules whose outputs are its stage features (GTN fine-tuning: `HookedTeacher`)
    stages: tuple[str, ...] = ()
    path: str | None = field(default=None, compare=False, metadata={"keyed": False})
    module: nn.Module | None = field(default=None, compare=False, repr=False, metadata={"keyed": False})

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else f"module:{type(self.module).__name__}"


def teacher_file(path: str | Path, *, stages: Sequence[str] = ()) -> ExternalTeacher:
    """A teacher file, recognised by its suffix (TEACHER_FILE_KINDS).

    `stages` (a .pt2 only): the names of its stage features among its outputs. A .pt2 that returns a dict
    {"logits": ..., "<stage>": (N, C, H, W) features, ...} can then be fine-tuned as a generic teacher
    (`finetune="gtn"`); every other file gives logits only (vanilla KD)."""
    p = Path(path)
    kind = TEACHER_FILE_KINDS.get(p.suffix.lower())
    if kind is None:
        raise ConfigError(f"teacher {str(path)!r}: give gtn, vanilla, sftn or none, or a teacher file ending in "
                          f"{', '.join(TEACHER_FILE_KINDS)} (ONNX, torch.export, TorchScript)")
    if not p.is_file():
        raise ConfigError(f"teacher file {p} does not exist")
    if stages and kind != "pt2":
        raise ConfigError(f"teacher file {p}: stage features come from a torch.export .pt2 that returns a dict of "
                          f"named outputs (or from a module: gtnpipe.teacher_from_module); a {kind} file gives logits only")
    return ExternalTeacher(kind, sha256_file(p), tuple(stages), path=str(p.resolve()))


class _Normalised(nn.Module):
    def __init__(self, module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - self.mean) / self.std)


def teacher_from_module(model: nn.Module, *, stages: Sequence[str] = (), input_mean: tuple[float, ...] | None = None,
                        input_std: tuple[float, ...] | None = None) -> ExternalTeacher:
    """Any torch classifier as a teacher. It must take [0, 1] images, or give the normalisation it expects
    (`input_mean`, `input_std`, per channel in [0, 1] pixel units). Keyed by its class and its weights.

    `stages`: names of submodules (as `model.named_modules()` names them) whose outputs are the teacher's stage
    features, shallowest first, one per boundary between the search space's stages: with them the teacher can be
    fine-tuned as a generic teacher (`finetune="gtn"`), forward hooks reading the features."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"teacher_from_module takes a torch.nn.Module, not {type(model).__name__}")
    names = dict(model.named_modules())
    unknown = [s for s in stages if s not in names or s == ""]
    if unknown:
        raise ConfigError(f"stages {unknown} are not submodules of {type(model).__name__}; its submodules include "
                          f"{', '.join(list(n for n in names if n)[:12])}, ...")
    if (input_mean is None) != (input_std is None):
        raise ConfigError("give both input_mean and input_std (the normalisation the model expects), or neither")
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if input_mean is not None and input_std is not None:
        digest.update(f"normalised:{list(input_mean)}:{list(input_std)}".encode())
        model = _Normalised(model, input_mean, input_std)
        stages = tuple(f"module.{s}" for s in stages)
    return ExternalTeacher("module", digest.hexdigest(), tuple(stages), None, model)


class _OnnxTeacher(nn.Module):
    """An ONNX classifier run by ONNX Runtime inside a torch module (no gradients: a teacher only infers)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None  # None: any batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().contiguous().numpy()
        step = self.batch or len(array)
        outs = []
        for start in range(0, len(array), step):  # a fixed-batch model: whole batches, the last one padded
            chunk = array[start:start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            outs.append(np.asarray(self.session.run(None, {self.input_name: padded})[0], dtype=np.float32)[:len(chunk)])
        return torch.from_numpy(np.concatenate(outs)).to(x.device)


class _Exported(nn.Module):
    """A torch.export program's module: its mode was fixed when it was exported, and it refuses train(); the
    training loop's train(False) calls stop here."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> _Exported:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.program(x)
        return out


def load_external(teacher: ExternalTeacher) -> nn.Module:
    """The teacher as an eval-mode torch module taking [0, 1] images (checked against its recorded sha256)."""
    if teacher.kind == "module":
        if teacher.module is None:
            raise ConfigError("a module teacher is known only to the Python process that made it: pass it again with "
                              "gtnpipe.teacher_from_module(model)")
        return teacher.module.train(False)
    if teacher.path is None or not Path(teacher.path).is_file():
        raise ConfigError(f"teacher file {teacher.path} does not exist (any more)")
    path = Path(teacher.path)
    if sha256_file(path) != teacher.sha256:
        raise ConfigError(f"teacher file {path} changed since this run started (its sha256 differs); run again")
    try:
        if teacher.kind == "onnx":
            return _OnnxTeacher(path)
        if teacher.kind == "pt2":
            if not weights_only_forced():
                raise ConfigError(f"loading {path.name} needs {WEIGHTS_ONLY[0]}={WEIGHTS_ONLY[1]} in the environment when "
                                  "Python starts (the gtnpipe command sets it): torch.export's loader unpickles a .pt2's "
                                  "constants without that restriction, so the file could run code. Start Python with "
                                  f"{WEIGHTS_ONLY[0]}={WEIGHTS_ONLY[1]}, or use the gtnpipe command")
            return _Exported(torch.export.load(str(path)).module())
        module: nn.Module = torch.jit.load(str(path), map_location="cpu")
        return module.train(False)
    except ConfigError:
        raise
    except Exception as err:  # each loader has its own exception types
        raise ConfigError(f"teacher file {path} could not be loaded as {teacher.kind} ({type(err).__name__}: {err})") from err


class _FromNormalised(nn.Module):
    """Undo the training loop's normalisation: the loop feeds (x - mean) / std, the teacher takes x in [0, 1]."""

    def __init__(self, teacher: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.teacher = teacher
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def raw(self, x: torch.Tensor) -> Any:
        """The teacher's own output: logits, or a .pt2's dict of named outputs."""
        return self.teacher((x * self.std + self.mean).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        if isinstance(out, dict):  # a .pt2 with named outputs: its logits
            if "logits" not in out:
                raise ConfigError(f"the teacher returns a dict with {sorted(out)}; name its logits 'logits'")
            out = out["logits"]
        return torch.as_tensor(out).float()


def as_training_teacher(teacher: ExternalTeacher, mean: tuple[float, ...], std: tuple[float, ...],
                        chw: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The teacher for the training loop (normalised images in), checked on two images of the data's shape."""
    module = _FromNormalised(load_external(teacher), mean, std).train(False)
    probe = torch.zeros(2, *chw)
    try:
        with torch.no_grad():
            out: Any = module(probe)
    except Exception as err:
        raise ConfigError(f"teacher {teacher.name} fails on a batch of 2 images of the data's shape {list(chw)} "
                          f"({type(err).__name__}: {err}); a teacher must take the data's images (float32 NCHW in [0, 1]) "
                          "with any batch size, or batch 1") from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"teacher {teacher.name} returns {shape} for 2 images; the data has {num_classes} classes, so "
                          f"a teacher must return (batch, {num_classes}) logits")
    return module


class HookedTeacher(nn.Module):
    """A module teacher as GTN training uses one: normalised images in (the training loop's), logits out, and
    `features_and_logits` giving the outputs of its named stage modules too, read by forward hooks."""

    def __init__(self, module: nn.Module, stages: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...], *,
                 from_outputs: bool = False) -> None:
        super().__init__()
        self.inner = _FromNormalised(module, mean, std)
        self.stage_names = stages
        self.from_outputs = from_outputs  # a .pt2: the stages are named outputs, not submodules
        self._captured: dict[str, torch.Tensor] | None = None
        if from_outputs:
            return
        named = dict(module.named_modules())
        missing = [s for s in stages if s not in named]
        if missing:
            raise ConfigError(f"teacher stages {missing} are not submodules of the teacher")
        for name in stages:
            named[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Any:
        def keep(_module: nn.Module, _args: Any, output: Any) -> None:
            if self._captured is not None:
                if not isinstance(output, torch.Tensor) or output.dim() != 4:
                    raise ConfigError(f"teacher stage {name!r} returns {type(output).__name__}"
                                      f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}; a stage must "
                                      "return one (N, C, H, W) feature map")
                self._captured[name] = output
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out

    def features_and_logits(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.from_outputs:
            out = self.inner.raw(x)
            missing = [n for n in ("logits", *self.stage_names) if not isinstance(out, dict) or n not in out]
            if missing:
                raise ConfigError(f"the .pt2 teacher's outputs lack {missing}; it must return a dict with 'logits' "
                                  "and each stage feature named in stages=")
            return [out[n] for n in self.stage_names], out["logits"].float()
        self._captured = {}
        try:
            logits = self.inner(x)
            missing = [n for n in self.stage_names if n not in self._captured]
            if missing:
                raise ConfigError(f"teacher stages {missing} did not run in the teacher's forward")
            return [self._captured[n] for n in self.stage_names], logits
        finally:
            self._captured = None
