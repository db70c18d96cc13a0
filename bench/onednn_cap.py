"""What oneDNN's AVX2 cap (gtnpipe.environment: ONEDNN_MAX_CPU_ISA=AVX2 on AMD CPUs with AVX-512) costs in training
speed here, against the alternatives: oneDNN uncapped, with channels-last activations (what gtnpipe trains with, and
what crashes on these CPUs) or contiguous NCHW ones.

First the minimal reproduction: one 1x1 stride-2 convolution (8 -> 16 channels) on a channels-last
16x8x64x64 batch, forward and backward, 200 times, in a fresh process per configuration: on an AMD EPYC with
AVX-512 and torch 2.13.0 uncapped it dies (SIGSEGV, or glibc's "free(): invalid next size" inside a build), in
oneDNN's brgconv_strided:avx512_core backward-data kernel (ONEDNN_VERBOSE=1 names it as the last primitive run).

Then seconds per training step (forward, backward, SGD update; random images: the speed does not depend on the
pixels) of the mbv3-28 teacher and largest and smallest students at batch 128 (28 px grey), and of the mbv3-32
teacher and smallest student at batch 16 (64 px colour, the own-data test's shapes), each configuration in its own
fresh process (oneDNN reads its cap once per process), configurations interleaved over `--rounds` rounds against
drift. A configuration that crashes is recorded as such.

    .venv/bin/python bench/onednn_cap.py [--steps 10] [--rounds 2]

Writes bench/results/onednn_cap.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
CONFIGS = {  # name -> (ONEDNN_MAX_CPU_ISA, channels-last activations)
    "AVX2 cap, channels-last (gtnpipe on these CPUs)": ("AVX2", True),
    "uncapped, channels-last": ("ALL", True),
    "uncapped, NCHW": ("ALL", False),
    "AVX2 cap, NCHW": ("AVX2", False),
}
MODELS = [  # (label, space, "teacher" or an arch name, channels, side, classes, batch)
    ("mbv3-28 teacher", "mbv3-28", "teacher", 1, 28, 10, 128),
    ("mbv3-28 largest student", "mbv3-28", "largest", 1, 28, 10, 128),
    ("mbv3-28 smallest student", "mbv3-28", "smallest", 1, 28, 10, 128),
    ("mbv3-32 teacher, 64 px colour", "mbv3-32", "teacher", 3, 64, 3, 16),
    ("mbv3-32 smallest student, 64 px colour", "mbv3-32", "smallest", 3, 64, 3, 16),
]

_REPRO = """
import torch
torch.manual_seed(0)
conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
for _ in range(200):
    x = torch.randn(16, 8, 64, 64){fmt}.requires_grad_()
    conv(x).sum().backward()
print("ok")
"""

_TIMING = """
import json, statistics, sys, time
import torch
from gtnpipe.models.static import build_static
from gtnpipe.models.teacher import SPACE_TEACHERS, build_teacher
from gtnpipe.space.spaces import TaskShape, get_space
models, steps, channels_last = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
out = {}
for label, space_name, which, c, side, classes, batch in models:
    space, task = get_space(space_name), TaskShape(c, (side, side), classes)
    torch.manual_seed(0)
    net = (build_teacher(SPACE_TEACHERS[space_name], space, task) if which == "teacher"
           else build_static(space.parse(which), space, task)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, side, side)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    times = []
    for step in range(steps + 2):  # two untimed steps: oneDNN creates its primitives on the first
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    out[label] = statistics.median(times)
print(json.dumps(out))
"""


def _run(code: str, isa: str, *args: str) -> tuple[str, int]:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=1800)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:], done.returncode


def _outcome(code: int) -> str:
    if code == 0:
        return "ok"
    return f"crashed ({signal.Signals(-code).name})" if code < 0 else f"failed (exit {code})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per configuration, interleaved")
    args = parser.parse_args()
    import torch

    from gtnpipe.deploy.timing import Machine

    repro = {}
    for fmt_name, fmt in (("channels-last", ".to(memory_format=torch.channels_last)"), ("NCHW", "")):
        for isa in ("ALL", "AVX2"):
            _, code = _run(_REPRO.format(fmt=fmt), isa)
            repro[f"{fmt_name}, ONEDNN_MAX_CPU_ISA={isa}"] = _outcome(code)
            print(f"repro {fmt_name} {isa}: {repro[f'{fmt_name}, ONEDNN_MAX_CPU_ISA={isa}']}", flush=True)

    per_config: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    crashes: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, (isa, channels_last) in CONFIGS.items():
            started = time.perf_counter()
            text, code = _run(_TIMING, isa, json.dumps(MODELS), str(args.steps), "1" if channels_last else "0")
            if code != 0:
                crashes[name] = f"{_outcome(code)}: {text}"
                print(f"{name}: {crashes[name]}", flush=True)
                continue
            per_config[name].append(json.loads(text))
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)

    rows = []
    for label, *_ in MODELS:
        row: dict[str, Any] = {"model": label}
        for name in CONFIGS:
            runs = [r[label] for r in per_config[name] if label in r]
            row[name] = ({"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs), "processes": len(runs)}
                         if runs else None)
        rows.append(row)
    report = {
        "command": f"python bench/onednn_cap.py --steps {args.steps} --rounds {args.rounds}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": Machine.here().describe(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "minimal_reproduction": repro,
        "crashed_configurations": crashes,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onednn_cap.json").write_text(json.dumps(report, indent=2) + "\n")
    base = next(iter(CONFIGS))
    lines = [f"Command: `{report['command']}` on {report['machine']['cpu']} ({report['machine']['cores']} CPUs, torch "
             f"{report['machine']['torch']}), {report['date']}", "",
             "Minimal reproduction (1x1 stride-2 convolution backward, 200 times):", ""]
    lines += [f"- {k}: {v}" for k, v in repro.items()]
    lines += ["", f"Seconds per training step, median of {args.rounds} fresh processes (min-max); ratio to `{base}`:", "",
              "| model | " + " | ".join(CONFIGS) + " |", "|---|" + "---:|" * len(CONFIGS)]
    for row in rows:
        cells = []
        for name in CONFIGS:
            cell, ref = row[name], row[base]
            if cell is None:
                cells.append("crashed" if name in crashes else "-")
                continue
            ratio = f", x{cell['median_s'] / ref['median_s']:.2f}" if ref and name != base else ""
            cells.append(f"{cell['median_s']:.3f} ({cell['min_s']:.3f}-{cell['max_s']:.3f}){ratio}")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    if crashes:
        lines += ["", "Crashed configurations:", ""] + [f"- {k}: {v}" for k, v in crashes.items()]
    (RESULTS / "onednn_cap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
