"""The benchmark scripts' own logic: the fixed student list and the KD table's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kd = _load("kd_effect")


def test_student_list_is_the_documented_pick() -> None:
    stored = json.loads((BENCH / "kd_students.json").read_text())
    assert stored == kd.pick_students()
    macs = [s["macs"] for s in stored["students"]]
    assert len(macs) == 10 and macs == sorted(macs)
    assert stored["students"][0]["arch"] == "k3e3_k3e3_k3e3_k3e3"
    assert macs[-1] / macs[0] > 8


def _run(arch: str, teacher: str, seed: int, top1: float) -> dict:
    return {"arch": arch, "teacher": teacher, "seed": seed, "test_top1": top1}


def test_summary_arithmetic() -> None:
    from gtnpipe.config.recipes import load_recipe
    from gtnpipe.pipeline import FASHION_MNIST_TASK
    from gtnpipe.space.spaces import get_space

    rec = load_recipe("kd-quick")
    a, b = "k3e3_k3e3_k3e3_k3e3", "k7e6_k7e6_k7e6_k7e6"
    runs = []
    for seed, shift in ((0, 0.0), (1, 1.0)):
        runs += [_run(a, "none", seed, 80 + shift), _run(a, "vanilla", seed, 81 + shift), _run(a, "gtn", seed, 82 + shift),
                 _run(a, "sftn", seed, 82.5 + shift), _run(b, "none", seed, 84 + shift),
                 _run(b, "vanilla", seed, 85 + shift), _run(b, "gtn", seed, 85.2 + shift)]
    teachers = {
        "vanilla": {"test_top1": 90.0, "train_seconds": 100.0, "epochs": 4, "key": "v", "log": None},
        "gtn": {"test_top1": 89.0, "train_seconds": 140.0, "epochs": 4, "key": "g",
                "log": {"branch_macs_per_image_per_step": 1e6}},
        f"sftn:{a}": {"test_top1": 89.5, "train_seconds": 120.0, "epochs": 4, "key": "s",
                      "log": {"branch_macs_per_image_per_step": 5e5}},
    }
    report = kd.summarise(runs, teachers, [a, b], [0, 1], "kd-quick", rec, get_space("mbv3-28"), FASHION_MNIST_TASK)
    row_a = report["table"][0]
    assert row_a["gtn"] == {"mean": 82.5, "half_range": 0.5, "n": 2}
    assert report["gaps"]["gtn_minus_vanilla_per_seed"] == {0: pytest.approx(0.6), 1: pytest.approx(0.6)}
    assert report["gaps"]["gtn_minus_none_per_seed"][0] == pytest.approx(1.6)
    assert report["gaps"]["gtn_minus_sftn_per_seed_on_sftn_students"][1] == pytest.approx(-0.5)
    assert report["cost"]["gtn_over_vanilla_wall"] == pytest.approx(1.4)
    assert report["cost"]["break_even_students_wall"] == pytest.approx(140 / 120)
    assert report["targets_met"] == {
        "gtn_beats_vanilla_by_0.3_every_seed": True,
        "gtn_beats_none_by_1_every_seed": True,
        "gtn_within_0.3_of_sftn_every_seed": False,
        "gtn_cost_at_most_1.5x_vanilla": True,
    }
    flops = report["teachers"]["gtn"]["training_flops"] / report["teachers"]["vanilla"]["training_flops"]
    assert flops == pytest.approx(report["cost"]["gtn_over_vanilla_flops"]) and flops > 1
    report["command"] = "python bench/kd_effect.py --quick"
    text = kd.render(report)
    assert "| `k3e3_k3e3_k3e3_k3e3` | 4.10 | 80.50 ± 0.50 | 81.50 ± 0.50 | 82.50 ± 0.50 | 83.00 ± 0.50 |" in text
    assert "gtn_within_0.3_of_sftn_every_seed: NOT met" in text
    assert "| 83.00 ± 0.50 | +1.00 / +1.00 |" in text  # per-seed GTN - vanilla of student a
    assert "GTN-KD above vanilla KD in 4 of 4 (student, seed) pairs, below in 0; mean +0.60" in text


def test_rerender_rebuilds_the_table_from_the_stored_runs(tmp_path: Path) -> None:
    # a results file written by an older version (no per-seed column) gains it; timings stay as measured
    runs = [_run("a", "vanilla", 0, 81.0), _run("a", "gtn", 0, 80.5), _run("a", "vanilla", 1, 82.0),
            _run("a", "gtn", 1, 82.25)]
    teacher = {"test_top1": 90.0, "train_seconds": 100.0, "epochs": 4, "training_flops": 1e12}
    report = {"command": "python bench/kd_effect.py", "recipe": "kd", "seeds": [0, 1], "runs": runs,
              "table": [{"arch": "a", "macs": 4e6}], "teachers": {"vanilla": teacher, "gtn": teacher},
              "cost": {"gtn_over_vanilla_wall": 1.0, "gtn_over_vanilla_flops": 1.0, "break_even_students_wall": 1.0,
                       "break_even_students_flops": 1.0},
              "gaps": {"gtn_minus_vanilla_per_seed": {}, "gtn_minus_none_per_seed": {},
                       "gtn_minus_sftn_per_seed_on_sftn_students": {}},
              "targets_met": {}, "wall_seconds_this_invocation": 6000.0,
              "machine": {"cores": 2, "jobs": 2, "torch_threads_per_job": 1}}
    path = tmp_path / "kd_effect.json"
    path.write_text(json.dumps(report))
    kd.rerender(path)
    assert json.loads(path.read_text())["table"][0]["gtn_minus_vanilla_per_seed"] == {"0": -0.5, "1": 0.25}
    text = path.with_suffix(".md").read_text()
    assert "| -0.50 / +0.25 |" in text and "GTN-KD above vanilla KD in 1 of 2" in text
    assert "This invocation: 100 min on 2 cores" in text


@pytest.mark.parametrize("path", sorted((BENCH / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_every_benchmark_variant_recipe_loads(path: Path) -> None:
    # the recipes behind bench/results/kd_effect-attempts.md: each must still load, under its own name
    from gtnpipe.config.recipes import load_recipe

    assert load_recipe(path).name == path.stem


def test_search_table_shows_the_rank_correlation_and_its_ceiling() -> None:
    search = _load("search")
    row = {"device": "host", "precision": "fp32", "latency_source": "measured-table", "evaluations": 10,
           "evolution": {"estimated_top1": 51.0, "macs": 5e6, "latency_ms_p90": 0.2}, "random": {"estimated_top1": 50.0}}
    result = {"command": "python bench/search.py", "accuracy_recipe": "quick", "rows": [row],
              "accuracy_predictor": {"samples": 150, "loo_rmse": 1.8}, "evolution_at_least_random_every_run": True,
              "rank_correlation": {"students": 10, "source": "bench/results/kd_effect.json", "spearman_by_method": {
                  "gtn": {"inherited": -0.29, "predictor": 0.37, "macs": 0.04, "seed_vs_seed": 0.5},
                  "none": {"inherited": 0.1, "predictor": 0.2, "macs": 0.3, "seed_vs_seed": None}}}}
    text = search.render(result)
    assert "| gtn | -0.29 | 0.37 | 0.04 | 0.50 |" in text and "| none | 0.10 | 0.20 | 0.30 | – |" in text
    assert "(Spearman-Brown): gtn 0.82." in text  # sqrt(2 * 0.5 / 1.5)
