"""How big is an INT8 artifact, per runtime, against the cost model's one-byte-per-weight formula?

INT8 files keep more than the int8 weights: 32-bit biases, per-channel scales and zero points,
quantize/dequantize nodes. This builds real INT8 artifacts of 8 students (the smallest, the
largest, 6 random) in every runtime installed here and reports the ratio file / formula.
cost.INT8_SIZE_FACTOR is the largest ratio seen, rounded up: size budgets are hard limits, so the
prediction is meant as an upper bound, and the report counts the students whose file exceeds it.

    .venv/bin/python bench/int8_size.py [--students 8]

Results: bench/results/int8_size.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from gtnpipe.deploy.backends import get_backend
from gtnpipe.deploy.export import Deployable, compile_inputs
from gtnpipe.devices.cost import INT8_SIZE_FACTOR, model_size_bytes
from gtnpipe.models.static import build_static
from gtnpipe.space.schedule import units
from gtnpipe.space.spaces import TaskShape, get_space

RESULTS = Path(__file__).parent / "results"
RUNTIMES = ("onnxruntime", "openvino", "tflite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=8)
    args = parser.parse_args()
    space, task = get_space("mbv3-28"), TaskShape(1, (28, 28), 10)
    archs = [space.smallest(), space.largest(), *space.sample_many(args.students - 2, seed=3)]
    calibration = (np.random.default_rng(0).random((64, 1, 28, 28)) * 255).astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            torch.manual_seed(0)
            net = build_static(arch, space, task)
            for p in net.parameters():  # random non-zero values: zero biases would be deduplicated by exporters
                torch.nn.init.normal_(p, std=0.1)
            work = Path(tmp) / arch.id
            inputs = compile_inputs(Deployable(net, (0.5,), (0.25,)), task, work, batch_size=1, max_opset=17,
                                    calibration_uint8=calibration)
            row = {"arch": arch.id, "formula_bytes": model_size_bytes(units(arch, space, task), "int8")}
            for runtime in RUNTIMES:
                built = get_backend(runtime).build(inputs, "int8", work / runtime)
                row[runtime] = sum((work / runtime / f).stat().st_size for f in built.files)
            rows.append(row)
            print(row, flush=True)
    report = {"command": f"python bench/int8_size.py --students {args.students}", "rows": rows, "runtimes": {}}
    for runtime in RUNTIMES:
        ratios = [r[runtime] / r["formula_bytes"] for r in rows]
        factor = INT8_SIZE_FACTOR[runtime]
        report["runtimes"][runtime] = {
            "ratio_min": min(ratios), "ratio_mean": statistics.fmean(ratios), "ratio_max": max(ratios),
            "INT8_SIZE_FACTOR": factor, "students_above_prediction": sum(q > factor for q in ratios),
            "mean_overestimate": statistics.fmean(factor / q - 1 for q in ratios)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_size.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# INT8 artifact size vs the cost model's one-byte-per-weight formula", "", f"`{report['command']}`", "",
             "| runtime | file / formula: min | mean | max | INT8_SIZE_FACTOR | students above the prediction | "
             "mean overestimate |", "|---|---:|---:|---:|---:|---:|---:|"]
    for runtime, r in report["runtimes"].items():
        lines.append(f"| {runtime} | {r['ratio_min']:.3f} | {r['ratio_mean']:.3f} | {r['ratio_max']:.3f} | "
                     f"{r['INT8_SIZE_FACTOR']:.2f} | {r['students_above_prediction']} of {len(rows)} | "
                     f"{100 * r['mean_overestimate']:.1f}% |")
    (RESULTS / "int8_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
