"""gtnpipe's Python API, end to end, on your own arrays and your own teacher module.

    .venv/bin/python examples/python_api.py [--recipe quick] [--out artifacts-api] [--images 3000]

1. your data as numpy arrays (here: a slice of Fashion-MNIST);
2. a teacher you already have, as a torch module (here: a small CNN trained on those arrays for a few epochs);
3. gtnpipe.distill: a pool student distilled from that module;
4. gtnpipe.search and gtnpipe.build: the best student for a device, distilled from your teacher, compiled, checked;
5. gtnpipe.compile: your teacher itself compiled for a device, as the same kind of artifact.

The test suite runs it with a small recipe (tests/test_api.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import gtnpipe
from gtnpipe.data.datasets import load_dataset


class MyTeacher(nn.Module):
    """Takes [0, 1] images (1 x 28 x 28), returns 10 logits: gtnpipe's convention for teachers and models."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(64 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.286) / 0.353)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quick", help="recipe name or .toml (training settings)")
    parser.add_argument("--out", type=Path, default=Path("artifacts-api"))
    parser.add_argument("--images", type=int, default=3000, help="training images in the arrays")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    # 1. arrays: uint8 images (N, H, W) or (N, C, H, W) and integer labels
    fm = load_dataset("fashion-mnist", val_size=0, train_subset=args.images, test_subset=1000)
    arrays = (fm.train.x, fm.train.y, fm.test.x, fm.test.y)

    # 2. a teacher module of your own
    teacher = train(MyTeacher(), torch.from_numpy(fm.train.x).float() / 255, torch.from_numpy(fm.train.y), epochs=3)

    # the data loaded once, for several calls
    ws = gtnpipe.workspace(arrays, gtnpipe.WorkspaceOptions(recipe=args.recipe, cache_dir=args.cache_dir))

    # 3. a pool student distilled from it
    student = gtnpipe.distill("smallest", teacher=teacher, ws=ws)
    print(f"distill: {student.arch} from the module teacher (its test top-1 {student.teacher_test_top1:.2f}%): "
          f"student test top-1 {student.test_top1:.2f}%")

    # 4. search and build for a device
    quick_search = gtnpipe.SearchConfig(iterations=100)
    found = gtnpipe.search("raspberry-pi-4", gtnpipe.BuildOptions(search=quick_search), ws=ws)
    print(f"search: pick {found.result.pick.arch.id}, estimated top-1 {found.result.pick.accuracy:.2f}%")
    built = gtnpipe.build("host", gtnpipe.BuildOptions(teacher=teacher, out=args.out, search=quick_search), ws=ws)
    print(f"build: {built.arch} as {built.runtime} {built.precision} -> {built.folder} (shipped top-1 {built.shipped_top1}%)")

    # 5. your teacher itself, compiled for a device
    compiled = gtnpipe.compile(teacher, "raspberry-pi-4", gtnpipe.CompileOptions(out=args.out), input_shape=(1, 28, 28),
                               data=arrays)
    print(f"compile: MyTeacher as {compiled.runtime} {compiled.precision} -> {compiled.folder} "
          f"(ONNX Runtime FP32 {compiled.reference_top1:.2f}%, shipped {compiled.shipped_top1:.2f}%)")
    print(json.dumps({"distill_top1": student.test_top1, "build_folder": built.folder,
                      "compile_folder": compiled.folder, "compile_precision": compiled.precision}))


if __name__ == "__main__":
    main()
