"""The benchmark suites as a library (fewstep.suites): the cheap suites run here at tiny settings, the
ones that train for minutes through their helpers."""
import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

from fewstep import suites
from fewstep.suites import SUITES, amed, diffusers_tests, digits, fd_speed, flow_accuracy, gan, gmm, schedules, sweep
from fewstep.training import data2d

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


def numbers(rows, key):
    return [r[key] for r in rows]


@pytest.fixture
def quick_plots(monkeypatch):
    """The suites' plots as empty files (matplotlib takes seconds a plot on a busy machine); the gmm
    test draws real ones."""
    def touch(*args):
        path = next(a for a in args if isinstance(a, Path))
        path.write_bytes(b"")
        return path

    for module, names in ((gmm, ["nfe_plot"]), (digits, ["nfe_plot", "side_by_side"]),
                          (gan, ["side_by_side"])):
        for name in names:
            monkeypatch.setattr(module, name, touch)


def test_the_registry_names_every_suite_and_no_module_imports_hydra_or_the_scripts():
    assert list(SUITES) == ["gmm", "digits", "reflow", "reflow-2d", "gan-2d", "gan-digits", "fd-speed",
                            "schedules", "amed", "flow-accuracy", "frontier"]
    for path in Path(suites.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import) (hydra|omegaconf|fewstep\.scripts)", source, re.M), path.name
        assert len(source.splitlines()) < 500, path.name


def test_gmm_writes_its_section_results_and_plots(tmp_path):
    written = gmm.gmm(tmp_path / "out", samplers=["euler", "heun"], nfe=[3, 10], num_samples=200, batch_size=100)
    assert [p.name for p in written] == ["gmm.md", "gmm.json", "gmm_fd.png", "gmm_ode_error.png"]
    assert all(p.is_file() for p in written) and written[2].stat().st_size > 1000
    rows = json.loads((tmp_path / "out" / "gmm.json").read_text())
    assert [(r["label"], r["target_nfe"], r["nfe"]) for r in rows] == [
        ("euler", 3, 3), ("euler", 10, 10), ("heun", 3, 3), ("heun", 10, 9)]
    assert all(math.isfinite(v) and v > 0 for v in numbers(rows, "fd") + numbers(rows, "ode_error"))
    euler = {r["nfe"]: r["ode_error"] for r in rows if r["label"] == "euler"}
    assert euler[10] < euler[3]
    text = (tmp_path / "out" / "gmm.md").read_text()
    assert text.startswith("## Analytic Gaussian mixture\n\nCommand: `python ")
    assert "200 samples of the 2-D mixture" in text and "| sampler | NFE 3 | NFE 10 |" in text
    assert re.search(r"\| heun \| [\d.e+-]+ \| [\d.e+-]+ \(9\) \|", text)


def test_on_a_shifted_flow_heun_dpm_2_and_dpmpp_2m_are_at_least_as_accurate_as_flow_match_heun(tmp_path, quick_plots):
    """At equal model calls, on the exact smooth flow of `flow_accuracy` (other seeds than the benchmark's);
    euler and heun are diffusers' FlowMatchEuler and FlowMatchHeun."""
    flow_accuracy.flow_accuracy(tmp_path, nfe=[3, 5, 11], num_samples=300, seed=7)
    rows = json.loads((tmp_path / "flow-accuracy.json").read_text())
    error = {(r["label"], r["target_nfe"]): r["ode_error"] for r in rows}
    assert {r["nfe"] for r in rows if r["target_nfe"] == 5} == {5}
    for calls in (3, 5, 11):
        heun = error["diffusers FlowMatchHeun", calls]
        assert error["heun", calls] == pytest.approx(heun, rel=1e-6)
        assert error["euler", calls] == pytest.approx(error["diffusers FlowMatchEuler", calls], rel=1e-6)
        assert error["dpm_2", calls] <= heun and error["dpmpp_2m", calls] <= heun, calls


def test_gmm_samples_on_the_grid_it_is_given(tmp_path, quick_plots):
    runs = {kind: json.loads(gmm.gmm(tmp_path / kind, samplers=["euler"], nfe=[4], num_samples=100,
                                        grid={"kind": kind})[1].read_text())[0] for kind in ("karras", "logsnr")}
    assert runs["karras"]["ode_error"] != runs["logsnr"]["ode_error"]


def test_an_unknown_grid_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r"grid keys \['spacing'\] unknown"):
        sweep.grid_of({"spacing": "linspace"})
    assert sweep.grid_of({"rho": 3.0}) == {**sweep.DEFAULT_GRID, "rho": 3.0}


def test_the_mixture_is_the_one_of_the_config():
    model = sweep.gmm_model()
    assert model.sample_shape == (2,) and (model.sigma_min, model.sigma_max) == (0.002, 80.0)
    assert model.means.tolist() == [[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0], [0.5, 2.5]]


def test_digits_scores_plain_and_skiptune_rows_and_draws_the_grids(tmp_path, quick_plots):
    written = digits.digits(tmp_path, samplers=["ddim"], nfe=[5], num_samples=40, batch_size=40)
    assert [p.name for p in written] == ["digits.md", "digits.json", "digits_grids_nfe5.png", "digits_fd.png"]
    rows = json.loads(written[1].read_text())
    assert [r["label"] for r in rows] == ["ddim", "ddim+skiptune"] and "grid" not in rows[0]
    assert all(math.isfinite(r["fd"]) for r in rows)
    text = written[0].read_text()
    assert "| ddim+skiptune |" in text and "Change with Skip-Tuning: ddim NFE 5: " in text


def test_gan_digits_scores_the_shipped_generators_on_three_seed_ranges(tmp_path, quick_plots):
    written = gan.gan_digits(tmp_path, num_samples=30, batch_size=30)
    assert [p.name for p in written] == ["gan-digits.md", "gan-digits.json", "gan_digits_grids.png"]
    rows = json.loads(written[1].read_text())
    assert [r["label"] for r in rows] == list(gan.SHIPPED)
    assert all(len(r["fd"]) == 3 and r["mean"] == pytest.approx(sum(r["fd"]) / 3) for r in rows)
    assert f"| {rows[0]['label']} | " + ", ".join(f"{v:.2f}" for v in rows[0]["fd"]) in written[0].read_text()


def test_fd_speed_agrees_with_pytorch_fid(tmp_path):
    written = fd_speed.fd_speed(tmp_path, repeats=1, dim=16, count=200)
    assert [p.name for p in written] == ["fd-speed.md", "fd-speed.json"]
    text = written[0].read_text()
    ours, theirs = (float(v) for v in re.findall(r"` \| ([\d.]+) \|", text))
    assert ours == pytest.approx(theirs, rel=1e-6) and ours > 0
    assert "16-d statistics of 200 correlated Gaussian features each, 1 runs" in text


def test_mode_coverage_counts_the_modes_a_sample_reaches():
    truth = data2d.gaussians8(n=4000, seed=1)
    assert gan.mode_coverage(truth, truth) == (8, pytest.approx(0.99, abs=0.01))
    one_mode = truth[(truth[:, 0] > 1) & (truth[:, 1].abs() < 0.5)]
    modes, good = gan.mode_coverage(one_mode, truth)
    assert modes == 1 and good == pytest.approx(0.99, abs=0.01)
    assert gan.mode_coverage(torch.zeros(100, 2), truth) == (0, 0.0)


def test_the_gan_2d_table_shows_modes_only_where_measured():
    rows = [{"data": "gaussians8", "objective": "wgan_gp", "generator_updates": 10, "fd": 0.5, "modes": 7,
             "good": 0.9}, {"data": "moons", "objective": "reflow_gan", "generator_updates": 10, "fd": 0.25}]
    assert gan.gan_2d_table(rows).splitlines()[2:] == ["| gaussians8 | wgan_gp | 10 | 0.5000 | 7 | 90.0% |",
                                                        "| moons | reflow_gan | 10 | 0.2500 | – | – |"]


def test_adaptive_rows_split_off_and_skiptune_changes_are_summed_up():
    rows = [{"label": "ddim", "sampler": "ddim", "target_nfe": 5, "nfe": 5, "fd": 10.0},
            {"label": "ddim+skiptune", "sampler": "ddim", "target_nfe": 5, "nfe": 5, "fd": 8.0},
            {"label": "rf dopri5", "sampler": "dopri5", "target_nfe": "dopri5", "nfe": 120.5, "fd": 1.234}]
    plotted, adaptive = sweep.split_adaptive(rows)
    assert plotted == rows[:2] and adaptive == "| rf dopri5 | 1.23 | 120.5 |"
    assert sweep.skiptune_summary(rows) == "Change with Skip-Tuning: ddim NFE 5: 10.00 -> 8.00 (-20%)."
    assert sweep.skiptune_summary(rows[:1]) == ""


def test_schedule_rows_tables_and_the_best_sentence():
    model = sweep.gmm_model()
    searched = lambda name, nfe: torch.tensor([1.0, 0.0]) if nfe == 4 else None  # noqa: E731
    rows = schedules.grid_rows(model, ["euler"], [3, 4], searched)
    assert [(label, target) for label, _, target, _ in rows] == [("euler karras", 3), ("euler karras", 4),
                                                                  ("euler searched", 4)]
    assert torch.equal(rows[0][3], sweep.default_grid("euler", model, 3))
    entry = {"sigmas": [80.0, 1.5, 0.0], "how": "karras", "seconds": 12.4}
    table = schedules.searched_grids_table({"heun": {5: entry}}, [5, 6])
    assert table.splitlines()[2:] == ["| heun | 5 | 80, 1.5, 0 | karras | 12 |"]
    results = [{"label": "euler karras", "target_nfe": 5, "fd": 4.0}, {"label": "euler searched", "target_nfe": 5,
                                                                       "fd": 2.0}]
    assert schedules.best_sentence(results, 1.0, ["euler"]) == (
        " At NFE 5 the searched grid improves FD by euler 2.0x (default / searched). Best at NFE 5: euler searched "
        "2.00 (2.00x converged).")
    assert schedules.best_sentence([], 1.0, ["euler"]) == ""


def test_amed_rows_cover_the_paper_grid_the_predictors_and_the_searched_grids():
    model = sweep.gmm_model()
    table = {"sigmas": [80.0, 1.0, 0.002], "sampler_options": {"afs": True, "r": [0.4, 0.6], "c": [1.0, 0.99]}}
    rows = amed.amed_rows(model, ["ddim", "amed", "amed_plugin"], [3], {"amed": {3: ("predictor", table)}},
                          lambda name, nfe: None)
    assert [label for label, *_ in rows] == ["ddim paper", "amed_plugin r=1/2 paper", "amed learned",
                                             "amed frozen table", "amed_plugin r=1/2 karras",
                                             "amed_plugin r=1/2 searched"]
    paper = amed.paper_grid("ddim", model, 3, {"afs": True})
    assert paper[0] == 80.0 and paper[-1] == pytest.approx(model.sigma_min)
    assert rows[2][2]["predictor"] == "predictor" and rows[3][2] == table["sampler_options"]
    assert amed.frozen_tables({"amed": {3: (None, table)}}) == (
        "| amed | 3 | 80, 1, 0.002 | 0.400, 0.600 | 1.0000, 0.9900 |")


def test_run_rows_measures_each_grid_once_and_drops_missing_ones(capsys):
    calls = []
    grid = torch.tensor([2.0, 1.0, 0.0])
    rows = [("euler a", "euler", {}, 2, grid), ("euler a", "euler", {}, 3, grid),
            ("euler b", "euler", {}, 2, lambda: None)]
    results = amed.run_rows(rows, lambda name, options, sigmas: calls.append(name) or {"fd": 1.5})
    assert calls == ["euler"] and [(r["label"], r["target_nfe"], r["nfe"]) for r in results] == [("euler a", 2, 2),
                                                                                                ("euler a", 3, 2)]
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_amed_ratios_sentence_names_missing_rows_with_a_dash():
    results = [{"label": "amed learned", "target_nfe": 5, "fd": 3.0},
               {"label": "ipndm paper", "target_nfe": 5, "fd": 6.0}]
    text = amed.ratios_sentence(results, 1.5)
    assert "AMED-Solver is 0.50x iPNDM's FD and – DDIM's" in text
    assert text.endswith("Best at NFE 5: amed learned 3.00 (2.00x converged).")


def fake_checkout(root: Path) -> Path:
    """A diffusers checkout with one SchedulerCommonTest: a test that passes, one that fails, one skipped."""
    (root / "tests" / "schedulers").mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "schedulers" / "__init__.py").write_text("")
    (root / "setup.py").write_text('setup(version="9.9.9")\n')
    (root / "tests" / "schedulers" / "test_schedulers.py").write_text(textwrap.dedent("""
        import unittest

        class SchedulerCommonTest(unittest.TestCase):
            scheduler_classes = ()

            def test_steps(self):
                scheduler = self.scheduler_classes[0](**self.get_scheduler_config())
                scheduler.set_timesteps(4)
                assert len(scheduler.timesteps) == 4

            def test_clip_sample(self):
                self.scheduler_classes[0](**self.get_scheduler_config(clip_sample=True))

            def test_later(self):
                self.skipTest("not today")
    """))
    return root


def test_the_diffusers_runner_reports_passes_failures_and_skips(tmp_path):
    checkout = fake_checkout(tmp_path / "diffusers")
    assert diffusers_tests.checkout_version(checkout) == "9.9.9"
    results, broken = diffusers_tests.run_tests(checkout, ["common-euler", "ddim"], "karras")
    text, failed = diffusers_tests.report(["common-euler", "ddim"], "karras", results, broken)
    lines = text.splitlines()
    assert lines[2:5] == ["common-euler: diffusers SchedulerCommonTest on FewstepScheduler(sampler=euler, "
                          "schedule=karras)", "    passed 1  failed 1  errors 0  skipped 1",
                          lines[4]] and lines[4].startswith("    FAILED test_clip_sample: ")
    assert "clip_sample" in lines[4] and "ddim: diffusers DDIMSchedulerTest" in lines[5]
    assert lines[6].startswith("    NOT IMPORTABLE: ModuleNotFoundError") and failed == 2
    assert lines[-1] == "TOTAL: passed 1  failed 1  errors 0  skipped 1"


def test_the_diffusers_runner_refuses_a_folder_without_scheduler_tests(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} has no tests/schedulers"):
        diffusers_tests.run_tests(tmp_path, ["ddim"], "karras")


def test_fewstep_config_keeps_only_what_differs_from_the_defaults():
    config = diffusers_tests.fewstep_config({"num_train_timesteps": 1000, "beta_end": 0.012, "clip_sample": True,
                                             "variance_type": "fixed_small"}, "heun", "discrete")
    assert config == {"beta_end": 0.012, "clip_sample": True, "sampler": "heun", "schedule": "discrete"}



# -- scripts/benchmark.py: where its results go -----------------------------------------------------
@pytest.fixture
def benchmark_in(tmp_path, monkeypatch):
    """scripts/benchmark.py's main in a copy of a checkout's tracked results (tmp_path), with one fake
    suite that writes its section; returns `run(*args) -> (exit code, stdout, stderr)`."""
    import contextlib
    import io
    import sys

    from fewstep.scripts import benchmark

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "gmm.md").write_text("## gmm\n\nthe shipped numbers\n")
    (tmp_path / "BENCHMARKS.md").write_text("the shipped report\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(benchmark, "SUITES", {"fake": lambda out_dir, num_samples=10: sweep.write_suite(
        sweep.output_dir(out_dir), "fake", "Fake", f"{num_samples} samples", [], [])})

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["benchmark.py", *args])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                benchmark.main()
                code = 0
            except SystemExit as stop:
                code = stop.code
        return code, out.getvalue(), err.getvalue()

    return run


def test_a_benchmark_run_writes_under_runs_and_leaves_the_shipped_results_alone(benchmark_in, tmp_path):
    shipped = {p: p.read_bytes() for p in (tmp_path / "BENCHMARKS.md", tmp_path / "benchmarks" / "gmm.md")}
    code, out, _ = benchmark_in("--suite", "fake", "--num-samples", "200")
    assert code == 0 and {p: p.read_bytes() for p in shipped} == shipped
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["gmm.md"]
    [run] = (tmp_path / "runs" / "benchmark").iterdir()
    assert sorted(p.name for p in run.iterdir()) == ["BENCHMARKS.md", "fake.json", "fake.md"]
    assert "200 samples" in (run / "BENCHMARKS.md").read_text()
    assert "Command: `python benchmark.py --suite fake --num-samples 200`" in (run / "fake.md").read_text()
    where = run.relative_to(tmp_path)
    assert out.strip() == (f"wrote the results to {where}/ and the report {where / 'BENCHMARKS.md'} (the shipped "
                           f"results change only with --update-tracked)")


def test_update_tracked_rewrites_the_shipped_results_and_nothing_else(benchmark_in, tmp_path):
    code, out, _ = benchmark_in("--suite", "fake", "--update-tracked")
    assert code == 0 and out.strip() == "wrote the results to benchmarks/ and the report BENCHMARKS.md"
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["fake.json", "fake.md", "gmm.md"]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "the shipped numbers" in report and "10 samples" in report and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--update-tracked", "--out-dir", "x"], "--update-tracked writes benchmarks/ and BENCHMARKS.md; it takes no "
                                             "--out-dir or --report"),
    (["--update-tracked", "--report", "R.md"], "it takes no --out-dir or --report"),
])
def test_update_tracked_takes_no_other_destination(benchmark_in, tmp_path, args, message):
    code, _, err = benchmark_in("--suite", "fake", *args)
    assert code == 2 and err.strip().splitlines()[-1].endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md", "benchmarks"]


def test_update_tracked_runs_only_in_a_checkout(benchmark_in, tmp_path):
    (tmp_path / "BENCHMARKS.md").unlink()
    code, _, err = benchmark_in("--suite", "fake", "--update-tracked")
    assert code == 2 and err.strip().endswith(f"--update-tracked rewrites the checkout's BENCHMARKS.md; there is none "
                                              f"in {tmp_path}: run it from the checkout")
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["gmm.md"]


# -- the frontier ------------------------------------------------------------------------------------
def test_the_frontier_chooses_each_nfe_on_the_tuning_range_and_scores_it_on_the_held_out_ones(tmp_path, monkeypatch):
    """Tiny settings: the digits DDPM only, NFE 1-2, two samplers on the default grid, 10 samples a range,
    converged at NFE 3; the mixture at 20 noises."""
    from fewstep.suites import frontier

    monkeypatch.setattr(frontier, "spread_plot", lambda series, path, *a, **k: Path(path).write_bytes(b"") or path)
    written = frontier.frontier(tmp_path, families={"digits_ddpm": ("digits_ddpm",)}, samplers=["euler", "dpmpp_2m"],
                                nfe=[1, 2], kinds=("grid", "generator"), num_samples=10, tuning_samples=12,
                                held_out_seeds=[100, 200, 300], tuning_seed=900, batch_size=12, gmm_samples=20,
                                converged_nfe=3, kid_subsets=2)
    assert [p.name for p in written] == ["frontier.md", "frontier.json", "frontier_ratio.png"]
    rows = json.loads(written[1].read_text())
    digits_rows = [r for r in rows if r["model"] == "digits_ddpm"]
    converged = next(r for r in rows if r["model"] == "converged")
    assert [r["target_nfe"] for r in digits_rows] == [1, 2] and converged["nfe"] == 3
    for r in digits_rows:
        assert r["entry"] == min(r["tuning_fd"], key=r["tuning_fd"].get) and r["source"] == "grid"
        assert sorted(r["tuning_fd"]) == ["digits_ddpm dpmpp_2m karras", "digits_ddpm euler karras"]
        assert len(r["ranges"]) == 3 and r["fd"]["values"] == [s["fd"] for s in r["ranges"]]
        assert r["ratio"]["fd"]["values"] == pytest.approx([s["fd"] / c["fd"] for s, c in
                                                            zip(r["ranges"], converged["ranges"])])
        assert all(math.isfinite(v) for v in r["kid"]["values"])
    mixture = [r for r in rows if r["model"] == "mixture"]
    assert [r["target_nfe"] for r in mixture] == [1, 2]
    for r in mixture:
        assert r["entry"] == min(r["tuning_ode_error"], key=r["tuning_ode_error"].get)
        assert len(r["ode_error"]["values"]) == 3 and r["baseline"].endswith("karras")
    text = written[0].read_text()
    assert text.startswith("## The few-step frontier\n\nCommand: `python ")
    assert f"| digits_ddpm | 1 | {digits_rows[0]['entry']} | grid | " in text
    assert "| converged | 3 | digits_ddpm dpmpp_2m" in text


def test_the_frontier_refuses_a_tuning_range_that_overlaps_a_held_out_one(tmp_path):
    from fewstep.suites import frontier

    with pytest.raises(ValueError, match="the seed ranges 100-109 and 105-116 overlap"):
        frontier.frontier(tmp_path, num_samples=10, tuning_samples=12, tuning_seed=105, held_out_seeds=[100, 200, 300])


def test_the_frontier_candidates_of_the_digits_ddpm_name_where_they_come_from(tmp_path, monkeypatch):
    """At NFE 5 the default and searched grids, the AMED predictors and Skip-Tuning at the factors calibrated
    for NFE 5 (which change the samples only while they are drawn); at NFE 4 no predictor and no Skip-Tuning; the
    learned solver where its table has the NFE; a one-step generator at NFE 1 only."""
    from fewstep.samplers.learned import dpmpp_2m_weights
    from fewstep.suites import candidates
    from fewstep.tuning import solver_tables
    from fewstep.tuning.learned_solver import SolverFit

    ddpm = candidates.load_model("digits_ddpm")
    table = tmp_path / "learned.json"
    sigmas = torch.tensor([80.0, 2.0, 0.1, 0.0], dtype=torch.float64)
    solver_tables.write(table, ddpm[0], "digits_ddpm", SolverFit(3, sigmas, dpmpp_2m_weights(sigmas), 0.1, 0.2, "x",
                                                                   True, 1.0))
    monkeypatch.setattr(solver_tables, "default_path", lambda denoiser: table)
    [learned] = [c for c in candidates.candidates("digits_ddpm", ddpm, 3, []) if c.source == "learned"]
    assert (learned.label, learned.nfe, learned.sigmas) == ("learned", 3, sigmas.tolist())
    assert learned.sample_fn([0]).shape == (1, 1, 16, 16)
    at5 = candidates.candidates("digits_ddpm", ddpm, 5, ["ddim", "heun"])
    assert [(c.label, c.source, c.nfe) for c in at5] == [
        ("ddim karras", "grid", 5), ("ddim searched", "table", 5), ("heun karras", "grid", 5),
        ("heun searched", "table", 5), ("amed predictor", "predictor", 5), ("amed_plugin predictor", "predictor", 5),
        ("ddim+skiptune", "skiptune", 5), ("heun+skiptune", "skiptune", 5)]
    assert at5[-2].sigmas == at5[1].sigmas and at5[-2].detail == "rho_top 1, rho_bottom 0.8"
    assert len({c.key for c in at5}) == len(at5)
    plain, tuned = at5[1].sample_fn([0, 1]), at5[-2].sample_fn([0, 1])
    assert not torch.allclose(plain, tuned) and torch.equal(at5[1].sample_fn([0, 1]), plain)
    assert {c.source for c in candidates.candidates("digits_ddpm", ddpm, 4, ["ddim"])} == {"grid", "table"}
    generator = (torch.nn.Identity(), None)
    assert [(c.source, c.name) for c in candidates.candidates("g", generator, 1)] == [("generator", "g")]
    assert at5[0].name == "digits_ddpm ddim karras"
    assert candidates.candidates("g", generator, 2) == []
