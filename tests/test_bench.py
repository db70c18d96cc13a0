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
    return {"arch": arch, "teacher": teacher, "seed": seed, "test_top1": top1, "val_top1": top1 + 1}


def test_summary_arithmetic() -> None:
    from gtnpipe.config.recipes import load_recipe
    from gtnpipe.pipeline import FASHION_MNIST_TASK
    from gtnpipe.space.spaces import get_space

    rec = load_recipe("kd")
    a, b = "k3e3_k3e3_k3e3_k3e3", "k7e6_k7e6_k7e6_k7e6"
    runs = []
    for seed, shift in ((0, 0.0), (1, 1.0)):
        runs += [_run(a, "none", seed, 80 + shift), _run(a, "vanilla", seed, 81 + shift), _run(a, "gtn", seed, 82 + shift),
                 _run(a, "sftn", seed, 82.5 + shift), _run(b, "none", seed, 84 + shift),
                 _run(b, "vanilla", seed, 85 + shift), _run(b, "gtn", seed, 85.2 + shift)]
    teachers = {
        "vanilla": {"test_top1": 90.0, "train_seconds": 100.0, "epochs": 10, "key": "v", "log": None},
        "gtn": {"test_top1": 89.0, "train_seconds": 240.0, "epochs": 7, "init_epochs": 10, "key": "g",  # kd: 5 + 2
                "log": {"branch_macs_per_image_per_step": 1e6}},
        f"sftn:{a}": {"test_top1": 89.5, "train_seconds": 120.0, "epochs": 7, "init_epochs": 10, "key": "s",
                      "log": {"branch_macs_per_image_per_step": 5e5}},
    }
    tuning = {"vanilla": {"chosen": [0.5, 2.0], "val_top1_by_grid_point": {"alpha 0.5 tau 2.0": 82.0}}}
    report = kd.summarise(runs, teachers, tuning, [a, b], [0, 1], rec, get_space("mbv3-28"), FASHION_MNIST_TASK, 4000)
    row_a = report["table"][0]
    assert row_a["gtn"] == {"mean": 82.5, "half_range": 0.5, "val_mean": 83.5, "n": 2}
    # pairs: a +1.0 (both seeds), b +0.2 (both seeds): mean 0.6, sd 0.462, SE 0.231
    gv = report["paired"]["gtn_minus_vanilla"]
    assert gv["mean"] == pytest.approx(0.6) and gv["n_pairs"] == 4 and gv["above_zero"] == 4
    assert gv["standard_error"] == pytest.approx(0.4618802 / 2)
    assert report["gaps"]["gtn_minus_vanilla_per_seed"] == {"0": pytest.approx(0.6), "1": pytest.approx(0.6)}
    assert report["gaps"]["gtn_minus_none_per_seed"]["0"] == pytest.approx(1.6)
    assert report["gaps"]["gtn_minus_sftn_per_seed_on_sftn_students"]["1"] == pytest.approx(-0.5)
    assert report["cost"]["gtn_over_vanilla_wall"] == pytest.approx(2.4)
    assert report["cost"]["break_even_students_wall"] == pytest.approx(240 / 120)
    assert report["teacher_minus_student_mean"]["vanilla"] == pytest.approx(90 - 83.5)
    assert report["targets_met"] == {
        "gtn_beats_vanilla_by_0.3_every_seed_and_mean": True,
        "gtn_beats_none_by_1_every_seed": True,
        "gtn_within_0.3_of_sftn_every_seed": False,
        "gtn_cost_at_most_3x_vanilla": True,
    }
    assert set(report) >= {"seeds", "cost", "gaps", "targets_met"}  # kept across versions: results stay comparable
    flops = report["teachers"]["gtn"]["training_flops"] / report["teachers"]["vanilla"]["training_flops"]
    assert flops == pytest.approx(report["cost"]["gtn_over_vanilla_flops"]) and flops > 1
    report["command"] = "python bench/kd_effect.py"
    text = kd.render(report)
    assert "| `k3e3_k3e3_k3e3_k3e3` | 4.10 | 80.50 ± 0.50 | 81.50 ± 0.50 | 82.50 ± 0.50 | 83.00 ± 0.50 |" in text
    assert "gtn_within_0.3_of_sftn_every_seed: NOT met" in text
    assert "| 83.00 ± 0.50 | +1.00 / +1.00 |" in text  # per-seed GTN - vanilla of student a
    assert "- GTN − vanilla: +0.60 ± 0.23 (SE; 4 pairs, 4 above 0; per seed +0.60 / +0.60)" in text
    assert "| vanilla | 82.00 | – | – | – |" in text  # the grid row: points not run show a dash


def test_run_keys_survive_a_new_setting_at_its_default() -> None:
    from dataclasses import dataclass

    from gtnpipe.stages.keys import Stage

    @dataclass(frozen=True)
    class Before(Stage):
        STAGE = "x"
        CODE = ()
        a: int
        b: float = 0.5

    @dataclass(frozen=True)
    class After(Stage):
        STAGE = "x"
        CODE = ()
        a: int
        b: float = 0.5
        c: str = "old behaviour"

    assert kd.run_key(Before(1)) == kd.run_key(After(1)) == kd.run_key(After(1, 0.5, "old behaviour"))
    assert kd.run_key(After(1, c="new")) != kd.run_key(Before(1)) != kd.run_key(Before(2))


def test_runs_store_merges_invocations_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    first, second = kd.Store(path), kd.Store(path)  # both opened before either wrote
    first.add("k1", {"label": "one"}, {"test_top1": 80.0})
    second.add("k2", {"label": "two"}, {"test_top1": 81.0})
    assert set(json.loads(path.read_text())["runs"]) == {"k1", "k2"} == set(kd.Store(path).runs)


def test_the_grid_point_with_the_best_validation_top1_is_chosen_first_on_ties() -> None:
    results = {"a": {"val_top1": 80.0}, "b": {"val_top1": 82.0}, "c": {"val_top1": 81.0}, "d": {"val_top1": 81.0}}
    assert kd.choose_hp(results, {(0.5, 2.0): ["a", "b"], (0.9, 4.0): ["c", "d"]})["chosen"] == [0.5, 2.0]
    assert kd.choose_hp(results, {(0.5, 2.0): ["a"], (0.9, 4.0): ["c"]})["chosen"] == [0.9, 4.0]


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


_CPUINFO = """processor	: {i}
vendor_id	: {vendor}
cpu family	: {family}
model		: {model}
model name	: {name}
physical id	: 0
core id		: {core}
cpu MHz		: 2445.406
flags		: fpu sse sse2 avx {flags}
"""


def _cpuinfo(n: int, *, vendor: str = "AuthenticAMD", family: int = 25, model: int = 1, flags: str = "fma avx2",
             name: str = "AMD EPYC", smt: bool = False) -> str:
    return "\n".join(_CPUINFO.format(i=i, vendor=vendor, family=family, model=model, name=name, flags=flags,
                                     core=i // 2 if smt else i) for i in range(n))


def test_deploy_peak_is_cores_x_clock_x_fma_units_x_lanes_x_2() -> None:
    deploy = _load("deploy")
    # The FMA units per core are not in /proc/cpuinfo: the benchmark assumes them (DEFAULT_FMA_UNITS) and must say so;
    # what is tested is the formula and that the assumption is declared, not that the assumed count is right.
    units = deploy.DEFAULT_FMA_UNITS
    # this project's Zen 3 host: avx2+fma, no cpufreq or lscpu maximum (a VM): 2 cores x 2.445 GHz x units x 8 x 2
    cpus = deploy.parse_cpuinfo(_cpuinfo(2))
    peak = deploy.fp32_peak(cpus, allowed={0, 1}, threads=2, max_freq_khz=None, lscpu="Model name: AMD EPYC\n")
    expected = 2 * 2.445406 * units * 8 * 2
    assert peak["peak_gflops_fp32"] == pytest.approx(expected)
    assert peak["fp32_lanes_per_fma"] == 8 and peak["cores_used"] == 2 and "cpu MHz" in peak["clock_source"]
    assert peak["fma_units_per_core"] == units and peak["fma_units_source"].startswith(f"assumed {units}")
    assert f"= {expected:.1f} GFLOP/s" in peak["derivation"]
    # one thread uses one core; cpufreq's maximum wins over lscpu's and the current clock
    one = deploy.fp32_peak(cpus, allowed={0, 1}, threads=1, max_freq_khz="3500000", lscpu="CPU max MHz: 3000.0\n")
    assert one["peak_gflops_fp32"] == pytest.approx(3.5 * units * 8 * 2) and "cpuinfo_max_freq" in one["clock_source"]
    assert deploy.fp32_peak(cpus, allowed={0}, threads=2, max_freq_khz=None,
                            lscpu="CPU max MHz:  3000.0000\n")["peak_gflops_fp32"] == pytest.approx(3.0 * units * 8 * 2)
    # SMT siblings share a core's FMA units: 4 logical CPUs on 2 cores count 2 cores
    smt = deploy.parse_cpuinfo(_cpuinfo(4, smt=True))
    assert deploy.fp32_peak(smt, allowed={0, 1, 2, 3}, threads=4, max_freq_khz=None, lscpu=None)["cores_used"] == 2


def test_deploy_lanes_follow_the_flags_and_the_known_narrow_pipes() -> None:
    deploy = _load("deploy")

    def lanes(**kw: object) -> int:
        return deploy.fp32_lanes(deploy.parse_cpuinfo(_cpuinfo(1, **kw))[0])[0]

    assert lanes(vendor="GenuineIntel", family=6, model=106, flags="fma avx2 avx512f") == 16  # Ice Lake-SP
    assert lanes(family=26, flags="fma avx2 avx512f") == 16  # Zen 5: 512-bit pipes
    assert lanes(family=25, model=17, flags="fma avx2 avx512f") == 8  # Zen 4: 512-bit FMA on 256-bit pipes
    assert lanes(family=23, model=1) == 4 and lanes(family=23, model=49) == 8  # Zen 1 128-bit pipes, Zen 2 256-bit
    assert lanes(flags="") == 8 and lanes(vendor="GenuineIntel", family=6, flags="fma avx2") == 8
    cpus = deploy.parse_cpuinfo(_cpuinfo(2, vendor="GenuineIntel", family=6, flags="fma avx2 avx512f"))
    peak = deploy.fp32_peak(cpus, allowed={0, 1}, threads=2, max_freq_khz=None, lscpu=None, fma_units=1,
                            clock_override_mhz=2000.0)
    assert peak["peak_gflops_fp32"] == pytest.approx(2 * 2.0 * 1 * 16 * 2) and peak["fma_units_source"] == "--fma-units"


def test_int8_size_fits_on_one_set_and_checks_on_another() -> None:
    int8 = _load("int8_size")
    from gtnpipe.space.spaces import get_space

    space = get_space("mbv3-28")
    fit, held_out = int8.pick_students(space, fit=8, check=8, fit_seed=3, check_seed=4)
    assert len(fit) == 8 and len(held_out) == 8 and not {a.id for a in fit} & {a.id for a in held_out}
    assert fit[0] == space.smallest() and fit[1] == space.largest()
    # a check seed that overlaps the fit set still gives `check` new students
    _, same_seed = int8.pick_students(space, fit=8, check=8, fit_seed=3, check_seed=3)
    assert len(same_seed) == 8 and not {a.id for a in fit} & {a.id for a in same_seed}
    assert int8.fit_factor([1.2, 2.26]) == 2.26 and int8.fit_factor([2.261]) == 2.27


def test_int8_size_check_fails_when_a_held_out_file_exceeds_the_prediction() -> None:
    int8 = _load("int8_size")

    def row(formula: int, size: int) -> dict:
        return {"arch": f"a{formula}-{size}", "formula_bytes": formula, "onnxruntime": size}

    fit_rows = [row(1000, 1500), row(1000, 2000)]  # fitted factor 2.00
    ok = int8.summarise(fit_rows, [row(1000, 1800), row(2000, 3000)], shipped={"onnxruntime": 2.1},
                        runtimes=("onnxruntime",))["onnxruntime"]
    assert ok["fit"]["factor"] == 2.0 and ok["check_passed"]
    errs = ok["held_out"]["fitted_factor"]
    assert errs["worst_underestimate"] == pytest.approx(2000 / 1800 - 1)
    assert errs["mean_error"] == pytest.approx(((2000 / 1800 - 1) + (4000 / 3000 - 1)) / 2)
    bad = int8.summarise(fit_rows, [row(1000, 1800), row(1000, 2050)], shipped={"onnxruntime": 2.1},
                         runtimes=("onnxruntime",))["onnxruntime"]
    assert not bad["check_passed"] and bad["held_out"]["fitted_factor"]["students_above_prediction"] == 1
    assert bad["held_out"]["INT8_SIZE_FACTOR"]["students_above_prediction"] == 0
    assert bad["held_out"]["fitted_factor"]["worst_underestimate"] == pytest.approx(2000 / 2050 - 1)
    report = {"command": "python bench/int8_size.py", "fit_seed": 3, "check_seed": 4, "fit_rows": fit_rows,
              "check_rows": [row(1000, 1800), row(1000, 2050)], "runtimes": {"onnxruntime": bad}}
    assert "| -2.4% / +4.3% | 1 of 2 | 2.10 | +2.4% / +9.6% | 0 of 2 | FAILED |" in int8.render(report)


def test_deploy_targets_and_table_keep_the_shipped_file_beside_the_rebuilt_ones() -> None:
    deploy = _load("deploy")
    from gtnpipe.config.profiles import load_profile

    def row(runtime: str, precision: str, batch: int, model_file: str, p50: float, top1: float = 80.0) -> dict:
        return {"runtime": runtime, "precision": precision, "batch": batch, "model_file": model_file, "p50_ms": p50,
                "p90_ms": p50 * 1.1, "throughput_per_s": batch / p50 * 1e3, "top1": top1, "gflops": 10.0,
                "fraction_of_peak": 0.1}

    rows = [row("onnxruntime", "fp32", 1, "shipped", 0.3), row("torch-eager", "fp32", 1, "torch", 3.0),
            row("onnxruntime", "fp32", 1, "rebuilt", 0.4), row("onnxruntime", "int8", 1, "rebuilt", 0.35, top1=78.5),
            row("openvino", "fp32", 1, "rebuilt", 0.5)]
    t = deploy.targets(rows, load_profile("host"), shipped_precision="fp32")
    # the shipped row is not a candidate for the best backend; int8 is faster but 1.5 points below fp32
    assert t["best_backend_batch1"] == "onnxruntime int8"
    assert t["best_backend_batch1_speedup_over_torch"] == pytest.approx(3 / 0.35)
    assert t["shipped_file_over_rebuilt_p50"] == pytest.approx(0.75) and t["shipped_file_speedup_over_torch"] == pytest.approx(10)
    assert t["fastest_host_precision_within_limit"] == "fp32" and t["shipped_is_fastest_within_limit"]
    cpus = deploy.parse_cpuinfo(_cpuinfo(2))
    report = {"command": "python bench/deploy.py", "arch": "a", "macs": 14e6, "rows": rows, "skipped": {}, "targets": t,
              "machine": {"platform": "Linux", "threads": 2, "load_average_1min_before_after": [1.0, 2.0]},
              "peak": deploy.fp32_peak(cpus, allowed={0, 1}, threads=2, max_freq_khz=None, lscpu=None),
              "torch_matmul_gflops_fp32": 140.0,
              "shipped": {"file": "model-fp32.onnx", "sha256": "ab" * 32, "runtime": "onnxruntime", "precision": "fp32",
                          "batch": 1, "rebuilt_file_identical": False}}
    text = deploy.render(report)
    assert "| onnxruntime | fp32 | 1 | shipped | 0.300 |" in text and "| onnxruntime | fp32 | 1 | rebuilt | 0.400 |" in text
    assert "2 cores x 2.445 GHz x 2 FMA units/core x 8 FP32 lanes x 2 FLOPs per FMA = 156.5 GFLOP/s" in text
    assert "reaches 140.0 GFLOP/s here (89% of that peak" in text and "not byte-identical" in text
