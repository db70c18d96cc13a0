"""Memory of an image folder kept on disk vs in memory: ~20k generated 224-px-class JPEGs of mixed sizes.

1. Generates the folder (once; `--folder` keeps it between runs): `--images` JPEGs of 10 classes, 240-320 px a side,
   a coloured blob per class on noise (what tests/conftest.py's make_colour_folder draws).
2. Indexes it from scratch (storage "disk": every file hashed and decoded once, in threads), then opens it again
   (the index reused).
3. In a fresh process per storage, at --image-size 224: opens the folder and reads every training image once in
   batches of 32, in the epoch's random order, through gtnpipe.training.loader (DataLoader workers on disk); then
   `--train-steps` SGD steps of mbv3-224's smallest student at batch 32 on those batches, as training does.
   A sampler records the peak memory of the process and its DataLoader workers together: the sum of their PSS
   (proportional set size: a page shared by the fork counts once, split between the processes) and their RSS.

    .venv/bin/python bench/disk_data.py [--images 20000] [--folder /tmp/gtnpipe-disk-bench] [--train-steps 20]

Writes bench/results/disk_data.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
IMAGE_SIZE = 224
BATCH = 32


def generate(root: Path, images: int, classes: int = 10, seed: int = 0) -> None:
    from PIL import Image

    if (root / ".complete").is_file():
        return
    rng = np.random.default_rng(seed)
    for i in range(images):
        k = i % classes
        folder = root / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(240, 321, size=2))
        img = rng.normal(100, 30, size=(h, w, 3))
        hue = np.array([np.cos(2 * np.pi * (k / classes + j / 3)) for j in range(3)]) * 100 + 128
        cy, cx, r = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, rng.uniform(0.2, 0.35) * min(w, h)
        yy, xx = np.mgrid[:h, :w]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = hue
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(folder / f"{i:06d}.jpg", quality=90)
    (root / ".complete").write_text("")


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [c for child in (task / "children").read_text().split() for c in _tree(int(child))]
        except OSError:
            continue
    return pids


def _kb(pid: int, file: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """Peak PSS and RSS (kB) of this process and its descendants, sampled every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_pss_kb = self.peak_rss_kb = self.peak_workers = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(os.getpid())
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_kb(p, "smaps_rollup", "Pss") for p in pids))
            self.peak_rss_kb = max(self.peak_rss_kb, sum(_kb(p, "status", "VmRSS") for p in pids))
            self.peak_workers = max(self.peak_workers, len(pids) - 1)
            time.sleep(0.05)


def probe(folder: str, storage: str, index_dir: str, train_steps: int) -> dict[str, object]:
    """One storage, in this (fresh) process: open, one pass over the train split, a few training steps."""
    import torch
    import torch.nn.functional as F

    from gtnpipe.data.datasets import load_dataset
    from gtnpipe.models.static import build_static
    from gtnpipe.space.spaces import TaskShape, get_space
    from gtnpipe.training.loader import SplitLoader, decode_workers
    from gtnpipe.training.train import Normalizer

    sampler = PeakSampler()
    sampler.start()
    base_pss = sum(_kb(p, "smaps_rollup", "Pss") for p in _tree(os.getpid()))
    t0 = time.perf_counter()
    data = load_dataset(folder, val_size=0.1, image_size=IMAGE_SIZE, storage=storage, index_dir=Path(index_dir))
    open_s = time.perf_counter() - t0
    after_open_pss = sum(_kb(p, "smaps_rollup", "Pss") for p in _tree(os.getpid()))
    loader = SplitLoader(data.train)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    t0 = time.perf_counter()
    seen = sum(len(x) for x, _ in loader(batches))
    epoch_s = time.perf_counter() - t0
    read_peak_pss_kb = sampler.peak_pss_kb
    space = get_space("mbv3-224")
    model = build_static(space.smallest(), space, TaskShape(3, (IMAGE_SIZE, IMAGE_SIZE), data.num_classes))
    norm, opt = Normalizer(data.mean, data.std), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t0 = time.perf_counter()
    for (x, y), _ in zip(loader(batches[:train_steps]), range(train_steps), strict=False):
        loss = F.cross_entropy(model(norm(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    return {"storage": data.storage, "train_images": len(data.train), "images_read": seen,
            "decoded_train_mb": round(data.train.x.nbytes / 2**20, 1),
            "open_s": round(open_s, 1), "epoch_read_s": round(epoch_s, 1), "train_steps": train_steps,
            "train_s_per_step": round(train_s / max(train_steps, 1), 2),
            "workers": decode_workers() if data.storage == "disk" else 0,
            "start_pss_mb": round(base_pss / 1024), "after_open_pss_mb": round(after_open_pss / 1024),
            "read_peak_pss_mb": round(read_peak_pss_kb / 1024), "peak_pss_mb": round(sampler.peak_pss_kb / 1024),
            "peak_rss_sum_mb": round(sampler.peak_rss_kb / 1024),
            "peak_processes": sampler.peak_workers + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/gtnpipe-disk-bench"))
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--probe", nargs=3, metavar=("FOLDER", "STORAGE", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(*args.probe, args.train_steps)))
        return

    from gtnpipe.data.datasets import load_dataset

    root, index = args.folder / f"images-{args.images}", args.folder / "index"
    t0 = time.perf_counter()
    generate(root, args.images)
    generate_s = time.perf_counter() - t0
    shutil.rmtree(index, ignore_errors=True)  # the first indexing is what is timed: never an earlier run's index
    t0 = time.perf_counter()
    load_dataset(str(root), val_size=0.1, image_size=IMAGE_SIZE, storage="disk", index_dir=index)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_dataset(str(root), val_size=0.1, image_size=IMAGE_SIZE, storage="disk", index_dir=index)
    reindex_s = time.perf_counter() - t0
    rows = []
    for storage in ("disk", "memory"):
        run = subprocess.run([sys.executable, __file__, "--train-steps", str(args.train_steps),
                              "--probe", str(root), storage, str(index)], capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    folder_mb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 2**20
    result = {"images": args.images, "folder_mb": round(folder_mb), "image_size": IMAGE_SIZE, "batch": BATCH,
              "generate_s": round(generate_s, 1), "first_index_s": round(index_s, 1),
              "reopen_with_index_s": round(reindex_s, 2), "rows": rows,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "command": f".venv/bin/python bench/disk_data.py --images {args.images} --train-steps {args.train_steps}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "disk_data.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Image folder on disk vs in memory ({args.images:,} JPEGs, {folder_mb:.0f} MB, at {IMAGE_SIZE} px)", "",
             f"`{result['command']}`", "",
             f"Indexing (sha256 + one decode per file, threads): {index_s:.1f} s the first time, "
             f"{reindex_s:.2f} s with the index kept.", "",
             "Peak memory of the process and its DataLoader workers together (PSS: a page the fork shares counts once), "
             "while reading every training image once, and over the whole run (with the training steps of mbv3-224's "
             "smallest student, whose activations at batch 32 take most of it).", "",
             "| storage | train images | decoded train split | open | read every image once | train step (batch 32) "
             "| peak PSS reading | peak PSS with training | peak RSS sum |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['storage']} ({r['workers']} workers) | {r['train_images']:,} | {r['decoded_train_mb']:,} MB | "
                     f"{r['open_s']} s | {r['epoch_read_s']} s | {r['train_s_per_step']} s | "
                     f"{r['read_peak_pss_mb']:,} MB | **{r['peak_pss_mb']:,} MB** | {r['peak_rss_sum_mb']:,} MB |")
    (RESULTS / "disk_data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
