"""The schedule search (tuning.schedule_search) and schedule.kind=auto / table in the sampling configs;
the tables it writes next to the model (tuning.schedule_tables): test_schedule_tables.py."""
from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf

from helpers import ROOT, run_cli
from fewstep import samplers
from fewstep.tuning import schedule_search, schedule_tables
from fewstep.tuning.schedule_search import (PRIOR_MARGIN, Grid, SearchResult, GridParameters, lever_grids,
                                              ode_error, ode_reference, refine, run_search, search, seeded_noise,
                                              with_point_inserted)


@pytest.fixture(scope="module")
def search_gmm():
    return samplers.GMMDenoiser(means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], stds=[0.3, 0.5, 0.2],
                                weights=[0.3, 0.5, 0.2])


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_lever_grids_cost_exactly_the_nfe_and_start_where_allowed(name):
    grids = list(lever_grids(name, 6, 0.002, 80.0, lowest_top=15.0))
    assert len(grids) > 10
    for how, sigmas in grids:
        assert samplers.nfe(name, sigmas) == 6, how
        assert min(abs(float(sigmas[0]) - top) for top in (80.0, 40.0, 20.0)) < 1e-9, how
    # Heun reaches an even NFE only by returning at sigma_min (its last step then pays its corrector)
    assert all(sigmas[-1] > 0 for _, sigmas in grids) == (name == "heun")


def test_the_levers_are_every_kind_then_top_then_ending():
    """Tops: the model's sigma_max, then the round values from it down to lowest_top; endings: at
    sigma_min, or a step to 0 from sigma_min, 0.1 or 0.3 (time_uniform: from sigma_min only)."""
    hows = [how for how, _ in lever_grids("euler", 5, 0.002, 100.0, lowest_top=5.0)]
    endings = ["ends at sigma_min 0.002", "step to 0 from 0.002", "step to 0 from 0.1", "step to 0 from 0.3"]
    assert hows == [f"{kind}, sigma_max {top}, {ending}"
                    for kind in ("karras rho 2", "karras rho 4", "karras rho 7", "logsnr", "time_uniform")
                    for top in (100, 80, 40, 20, 10, 5)
                    for ending in (endings[:2] if kind == "time_uniform" else endings)]
    low = [how for how, _ in lever_grids("euler", 3, 0.002, 0.3)]  # no step from 0.3 down from a top of 0.3
    assert low and not any(how.endswith("from 0.3") for how in low)
    assert {len(sigmas) for _, sigmas in lever_grids("euler", 1, 0.002, 80.0)} == {2}  # one step: NFE 1
    with_afs = list(lever_grids("euler", 3, 0.002, 100.0, lowest_top=5.0, options={"afs": True}))
    assert [how for how, _ in with_afs] == hows  # the same levers, one step more: afs saves a call
    assert all(len(sigmas) == 5 and samplers.nfe("euler", sigmas, {"afs": True}) == 3 for _, sigmas in with_afs)


@pytest.mark.parametrize("ending, low, top", [("zero", 0.01, 60.0), ("sigma_min", 0.01, 60.0), ("zero", 0.3, 60.0),
                                               ("zero", 0.3, 20.0)])  # from 0.3; from lowest_top itself
def test_grid_parameters_reproduce_the_start_and_keep_any_grid_inside_the_range(ending, low, top):
    start = samplers.get_sigmas("karras", 5, low, top, final_sigmas_type=ending)
    params = GridParameters(start, sigma_min=0.01, sigma_max=150.0, lowest_top=20.0)
    assert torch.allclose(params().detach(), start, rtol=1e-9, atol=0)
    torch.manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            for p in params.parameters():
                p.add_(torch.randn_like(p) * 3)
        sigmas = params().detach()
        samplers.check_sigmas(sigmas)  # strictly decreasing
        assert 20.0 * (1 - 1e-3) <= sigmas[0] <= 150.0 and sigmas[sigmas > 0].min() >= 0.01 * (1 - 1e-9)
        assert (sigmas[-1] == 0) == (ending == "zero") and len(sigmas) == len(start)
        if ending == "sigma_min":  # a grid ending there keeps that end
            assert sigmas[-1] == pytest.approx(0.01, rel=1e-12)
    if ending == "sigma_min":  # whatever the bottom's parameter, which only a grid ending with a step to 0 has
        with torch.no_grad():
            params.b.fill_(0.0)
        assert params()[-1].item() == pytest.approx(0.01, rel=1e-12)


def test_the_reference_is_dopri5_to_0_and_the_error_the_rms_distance_to_it_with_the_options(search_gmm):
    noise = seeded_noise(range(4), (2,))
    reference = ode_reference(search_gmm, noise, rtol=1e-3, atol=1e-4)
    assert torch.equal(reference, samplers.sample("dopri5", search_gmm, noise.double(),
                                                  torch.tensor([80.0, 0.002, 0.0], dtype=torch.float64),
                                                  rtol=1e-3, atol=1e-4))
    grid = [80.0, 5.3, 0.7, 0.0]  # a list: read as float64
    x = samplers.sample("euler", search_gmm, noise.double(), torch.tensor(grid, dtype=torch.float64))
    error = ode_error("ipndm", search_gmm, noise, reference, grid, {"max_order": 1})  # iPNDM of order 1 is Euler
    assert error.item() == pytest.approx((x - reference).pow(2).mean().sqrt().item(), rel=1e-12)
    assert abs(ode_error("ipndm", search_gmm, noise, reference, grid).item() - error.item()) > 1e-3


def test_the_search_functions_default_to_the_search_commands_settings(search_gmm, monkeypatch):
    """What `run_search`, `search` and `refine` use when not told: conf/search_schedule.yaml's values
    (the command passes them all), the held-out noises right after the training ones."""
    conf = OmegaConf.load(ROOT / "conf" / "search_schedule.yaml")
    seen = {}

    def fake_reference(denoiser, noise, rtol, atol, progress, cond=None, calls=None):
        seen.setdefault("references", []).append((noise, rtol, atol))
        seen["cond"] = cond
        calls.append(0)
        return noise.double()

    def fake_search(name, denoiser, nfe, noise, reference, held_out, held_out_reference, options, iterations, lr, log,
                    warm, progress, cond=None):
        seen["search"] = (iterations, lr)
        return SearchResult(nfe, Grid(torch.tensor([1.0, 0.0]), 0.0, "x"), Grid(torch.tensor([1.0, 0.0]), 0.0, "x"),
                            None, 0.0)

    with monkeypatch.context() as m:
        m.setattr(schedule_search, "ode_reference", fake_reference)
        m.setattr(schedule_search, "search", fake_search)
        next(run_search("euler", search_gmm, [3], log=lambda line: None))
    (noise, *tolerances), (held_out, *held_out_tolerances) = seen["references"]
    assert torch.equal(noise, seeded_noise(range(conf.seed, conf.seed + conf.num_noises), (2,)))
    assert torch.equal(held_out, seeded_noise(range(conf.seed + conf.num_noises, conf.seed + 2 * conf.num_noises), (2,)))
    assert tolerances == held_out_tolerances == [conf.rtol, conf.atol]
    assert seen["search"] == (conf.iterations, conf.lr) and seen["cond"] == {}  # an unconditional model: no keywords

    def fake_refine(name, denoiser, start, noise, reference, options, iterations, lr, lowest_top, progress, cond=None):
        seen["refine"] = (iterations, lr)
        return start, 0.0

    noise = seeded_noise(range(2), (2,))
    with monkeypatch.context() as m:
        m.setattr(schedule_search, "refine", fake_refine)
        search("euler", search_gmm, 3, noise, noise.double(), noise, noise.double(), log=lambda line: None)
    assert seen["refine"] == (conf.iterations, conf.lr)

    adam, calls = torch.optim.Adam, []
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: seen.setdefault("adam", lr) and adam(params, lr=lr))
    monkeypatch.setattr(schedule_search, "ode_error", lambda *args, **kwargs: calls.append(1) or torch.ones((), requires_grad=True))
    start = samplers.get_sigmas("karras", 3, 0.5, 0.9)  # below 1: no floor of its own under the top
    assert torch.allclose(refine("euler", search_gmm, start, noise, noise.double())[0], start, rtol=1e-9, atol=0)
    assert (len(calls), seen["adam"]) == (conf.iterations, conf.lr)


def test_refinement_runs_the_sampler_with_its_options(search_gmm):
    """iPNDM of order 1 is Euler: refining for one is refining for the other."""
    noise = seeded_noise(range(8), (2,))
    reference = ode_reference(search_gmm, noise)
    start = samplers.get_sigmas("karras", 3, 0.002, 80.0)
    euler = refine("euler", search_gmm, start, noise, reference, iterations=3)
    ipndm = refine("ipndm", search_gmm, start, noise, reference, {"max_order": 1}, iterations=3)
    assert torch.allclose(euler[0], ipndm[0], rtol=1e-12, atol=0) and euler[1] == pytest.approx(ipndm[1], rel=1e-12)


def test_refinement_lowers_the_ode_error_it_is_given(search_gmm):
    noise = seeded_noise(range(64), (2,))
    reference = ode_reference(search_gmm, noise)
    start = samplers.get_sigmas("karras", 4, 0.002, 80.0)
    before = ode_error("dpmpp_2m", search_gmm, noise, reference, start).item()
    refined, after = refine("dpmpp_2m", search_gmm, start, noise, reference, iterations=25)
    assert after < 0.7 * before
    assert ode_error("dpmpp_2m", search_gmm, noise, reference, refined).item() == pytest.approx(after, rel=1e-9)
    assert len(refined) == len(start) and refined[-1] == 0


def test_search_beats_the_default_grid_on_held_out_noise(search_gmm):
    (result,) = run_search("dpmpp_2m", search_gmm, [5], num_noises=128, log=lambda line: None)
    assert samplers.nfe("dpmpp_2m", result.best.sigmas) == 5
    assert result.best.error <= result.start.error  # the refined grid is kept only if it wins held out
    assert result.best.error < 0.6 * result.default.error
    record = result.record()
    assert record["held_out_ode_error"] == result.best.error and len(record["curve"]) == len(result.curve) > 10


@pytest.mark.parametrize("iterations", [0, 6])
def test_search_measures_each_start_with_the_options_and_keeps_the_refinement_only_if_it_wins_held_out(
        search_gmm, iterations):
    """DPM-Solver++(2M) with afs at NFE 4, warm-started from an NFE 3 grid: every lever grid, then the
    NFE 3 grid with a point inserted, measured on `noise` with the options; the best refined, kept if
    it wins on `held_out`; beside it today's default grid (Karras over the range, 5 steps with afs)."""
    name, nfe, options = "dpmpp_2m", 4, {"afs": True}
    noise, held_out = seeded_noise(range(8), (2,)), seeded_noise(range(8, 16), (2,))
    reference, held_out_reference = ode_reference(search_gmm, noise), ode_reference(search_gmm, held_out)
    warm = samplers.get_sigmas("karras", 4, 0.002, 80.0)
    lines = []
    began = time.perf_counter()
    result = search(name, search_gmm, nfe, noise, reference, held_out, held_out_reference, options, iterations=iterations,
                    lr=0.05, log=lines.append, warm={3: warm})
    took = time.perf_counter() - began

    lowest_top = min(PRIOR_MARGIN * float(reference.std()), 80.0)
    starts = list(lever_grids(name, nfe, 0.002, 80.0, lowest_top, options))
    starts.append(("the NFE 3 grid with a point inserted", with_point_inserted(warm)))
    errors = [ode_error(name, search_gmm, noise, reference, sigmas, options).item() for _, sigmas in starts]
    assert result.curve == [(how, error) for (how, _), error in zip(starts, errors)]
    assert all(samplers.nfe(name, sigmas, options) == nfe for _, sigmas in starts)
    assert lines[:len(starts)] == [f"dpmpp_2m NFE 4: {how}: ODE error {error:.5f}" for how, error in result.curve]

    how, sigmas = starts[errors.index(min(errors))]
    held = ode_error(name, search_gmm, held_out, held_out_reference, sigmas, options).item()
    assert (result.start.how, result.start.sigmas.tolist(), result.start.error) == (how, sigmas.tolist(), held)
    refined, train_error = refine(name, search_gmm, sigmas, noise, reference, options, iterations, 0.05, lowest_top)
    refined_held = ode_error(name, search_gmm, held_out, held_out_reference, refined, options).item()
    assert lines[len(starts):] == [f"dpmpp_2m NFE 4: refining {how} ({iterations} Adam steps)",
                                   f"dpmpp_2m NFE 4: refined {min(errors):.5f} -> {train_error:.5f} "
                                   f"(held-out {held:.5f} -> {refined_held:.5f})"]
    if iterations:
        assert refined_held < held  # (so this case checks the refined branch)
        assert (result.best.how, result.best.sigmas.tolist(), result.best.error) == (
            f"refined from {how}", refined.tolist(), refined_held)
    else:  # no step taken: the start itself, which does not win against itself
        assert (result.best.how, result.best.sigmas.tolist(), result.best.error) == (how, sigmas.tolist(), held)

    default = samplers.get_sigmas("karras", 5, 0.002, 80.0)
    assert (result.default.how, result.default.sigmas.tolist(), result.default.error) == (
        "karras rho 7 over the model's range, step to 0", default.tolist(),
        ode_error(name, search_gmm, held_out, held_out_reference, default, options).item())
    assert result.nfe == nfe and 0 < result.seconds <= took


def test_without_a_default_grid_at_the_nfe_the_result_has_none(search_gmm):
    """Heun's Karras grid ending with a step to 0 costs an odd NFE: at NFE 4 there is no default to compare."""
    noise = seeded_noise(range(4), (2,))
    reference = ode_reference(search_gmm, noise)
    result = search("heun", search_gmm, 4, noise, reference, noise, reference, iterations=0, log=lambda line: None)
    assert result.default is None and result.record()["default_held_out_ode_error"] is None


def test_a_sampler_that_reaches_the_nfe_on_no_lever_grid_is_one_line(search_gmm):
    noise = seeded_noise(range(4), (2,))
    reference = ode_reference(search_gmm, noise)
    with pytest.raises(ValueError) as error:
        search("euler", search_gmm, 0, noise, reference, noise, reference, iterations=0, log=lambda line: None)
    assert str(error.value) == "sampler 'euler' reaches NFE 0 on none of the lever grids"


def test_a_record_holds_the_result_as_json_values():
    grid = torch.tensor([10.0, 1.0, 0.0], dtype=torch.float64)
    result = SearchResult(5, Grid(grid, 0.1, "refined from x"), Grid(grid, 0.2, "x"), Grid(grid, 0.4, "karras"),
                          12.345, [("x", 0.3), ("y", 0.5)])
    record = {"how": "refined from x", "held_out_ode_error": 0.1, "start": {"how": "x", "held_out_ode_error": 0.2},
              "default_held_out_ode_error": 0.4, "seconds": 12.3}
    assert result.record(curve=False) == record
    assert result.record() == {**record, "curve": [{"how": "x", "ode_error": 0.3}, {"how": "y", "ode_error": 0.5}]}
    assert json.loads(json.dumps(result.record())) == result.record()


@pytest.mark.parametrize("num_noises, iterations", [(0, 5), (4, -1)])
def test_a_search_without_noises_or_with_negative_iterations_is_one_line(search_gmm, num_noises, iterations):
    with pytest.raises(ValueError) as error:
        next(run_search("euler", search_gmm, [3], num_noises=num_noises, iterations=iterations))
    assert str(error.value) == (f"num_noises must be at least 1 and iterations at least 0, got {num_noises} and "
                                f"{iterations}")


def test_one_noise_and_no_refinement_are_a_search(search_gmm):
    (result,) = run_search("euler", search_gmm, [3], num_noises=1, iterations=0, log=lambda line: None)
    assert result.nfe == 3 and result.best.how == result.start.how


def test_a_search_that_produces_nan_says_so(search_gmm):
    class Broken(torch.nn.Module):
        sigma_min, sigma_max, sample_shape = 0.002, 80.0, (2,)

        def forward(self, x, sigma):
            out = search_gmm(x, sigma)
            return out if float(sigma) > 1 else out * float("nan")

    noise = seeded_noise(range(4), (2,))
    reference = ode_reference(search_gmm, noise)
    with pytest.raises(FloatingPointError) as error:
        search("euler", Broken(), 3, noise, reference, noise, reference, log=lambda line: None)
    assert str(error.value) == ("the schedule search produced a NaN error for euler at NFE 3 on karras rho 2, "
                                "sigma_max 80, step to 0 from 0.002")
    start = torch.tensor([80.0, 0.5, 0.0], dtype=torch.float64)
    with pytest.raises(FloatingPointError) as error:
        refine("euler", Broken(), start, noise, reference, iterations=1)
    assert re.fullmatch(r"the schedule search produced a NaN error on the grid \[79\.99999\d*, 0\.49999\d*, 0\.0\]",
                        str(error.value))  # the start, as the grid's parameters give it back


def test_run_search_warm_starts_each_nfe_from_the_ones_before_on_seeded_noises(search_gmm):
    lines, began = [], time.perf_counter()
    results = list(run_search("ipndm", search_gmm, [4, 3], {"max_order": 2}, num_noises=4, seed=7, iterations=2,
                              rtol=1e-3, atol=1e-4, log=lines.append))
    took = time.perf_counter() - began
    assert [r.nfe for r in results] == [3, 4]
    noise, held_out = seeded_noise(range(7, 11), (2,)), seeded_noise(range(11, 15), (2,))
    reference, held_out_reference = (ode_reference(search_gmm, n, 1e-3, 1e-4) for n in (noise, held_out))
    again = search("ipndm", search_gmm, 4, noise, reference, held_out, held_out_reference, {"max_order": 2}, 2, 0.05,
                   log=lambda line: None, warm={3: results[0].best.sigmas})
    assert results[1].curve == again.curve and torch.equal(results[1].best.sigmas, again.best.sigmas)
    assert results[1].curve[-1][0] == "the NFE 3 grid with a point inserted"
    assert lines[0] == "dopri5 references of 8 noises (rtol 0.001, atol 0.0001)"
    seconds = re.fullmatch(r"dopri5 references of 8 noises: (\d+) s, NFE (\d+) \+ (\d+) \(batches of 4\)", lines[1])
    assert seconds and int(seconds[1]) <= took + 1 and int(seconds[2]) >= 6 and int(seconds[3]) >= 6  # a dopri5 step: 6
    assert sum(line.startswith("ipndm NFE 4: ") for line in lines) == len(again.curve) + 2  # refining, refined


# -- schedule.kind auto and table in the sampling configs -----------------------------------------
GRID = [20.0, 5.0, 1.0, 0.2, 0.0]  # the 4-step grid of the table model_with_table writes


def compose_sample(*overrides):
    from hydra import compose, initialize_config_dir

    from fewstep.cli import schemas; schemas.register()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@pytest.fixture(scope="module")
def model_with_table(tmp_path_factory):
    """The shipped digits model copied without its tables, and a dpmpp_2m table written next to it."""
    root = tmp_path_factory.mktemp("model") / "digits"
    shutil.copytree(ROOT / "assets" / "digits_ddpm", root, ignore=shutil.ignore_patterns("schedules"))
    denoiser = samplers.from_pretrained(root)
    schedule_tables.write(root / "schedules" / "dpmpp_2m.json", denoiser, "dpmpp_2m", {}, "digits", "ode_error", 4,
                          GRID)
    return root, denoiser


def grid_of(*overrides, model=None):
    from fewstep.cli.sampling import planned_grid

    cfg = compose_sample(*overrides)
    return planned_grid(cfg, model)


def test_auto_takes_the_searched_grid_of_the_nfe_and_says_so(model_with_table):
    root, denoiser = model_with_table
    for asked in (["nfe=4"], ["steps=4"]):
        steps, sigmas, line = grid_of("sampler=dpmpp_2m", *asked, model=denoiser)
        assert (steps, sigmas.tolist()) == (4, GRID)
        assert line.startswith("schedule: auto, the searched grid for NFE 4") and str(root) in line


@pytest.mark.parametrize("overrides", [["sampler=dpmpp_2m", "nfe=3"], ["sampler=dpmpp_2m", "nfe=5"],
                                       ["sampler=dpmpp_2m", "steps=5"],
                                       ["sampler=ipndm", "nfe=4"],
                                       ["sampler=dpmpp_2m", "nfe=4", "schedule.kind=karras"],
                                       ["sampler=dpmpp_2m", "nfe=4", "schedule.rho=7"]])
def test_without_a_grid_for_it_or_with_a_schedule_value_auto_is_todays_karras_grid(model_with_table, overrides):
    _, denoiser = model_with_table
    steps, sigmas, line = grid_of(*overrides, model=denoiser)
    assert torch.equal(sigmas, samplers.get_sigmas("karras", steps, denoiser.sigma_min, denoiser.sigma_max, rho=7.0))
    assert "karras" in line


def test_kind_table_reads_the_file_given_and_refuses_what_it_lacks(model_with_table):
    root, denoiser = model_with_table
    table = root / "schedules" / "dpmpp_2m.json"
    assert grid_of("sampler=dpmpp_2m", "nfe=4", "schedule.kind=table", f"schedule.table={table}",
                   model=denoiser)[1].tolist() == GRID
    with pytest.raises(ValueError, match="has no grid for NFE 6: it has NFE 4"):
        grid_of("sampler=dpmpp_2m", "nfe=6", "schedule.kind=table", f"schedule.table={table}", model=denoiser)
    with pytest.raises(ValueError, match="has no grid for NFE 6"):
        grid_of("sampler=dpmpp_2m", "steps=6", "schedule.kind=table", f"schedule.table={table}", model=denoiser)
    with pytest.raises(ValueError, match="drop schedule.sigma_max=80"):
        grid_of("sampler=dpmpp_2m", "nfe=4", "schedule.kind=table", f"schedule.table={table}",
                "schedule.sigma_max=80", model=denoiser)
    with pytest.raises(ValueError, match="is read with schedule.kind=table"):
        grid_of("sampler=dpmpp_2m", "nfe=4", f"schedule.table={table}", model=denoiser)


def test_the_search_command_writes_a_table_that_sample_py_samples_on(tmp_path):
    """search_schedule.py on the analytic mixture, write=true into a table file, then sample.py with
    schedule.kind=table samples on exactly that grid and says so in its first line (both in this process,
    helpers.run_cli)."""
    table = tmp_path / "gmm-dpmpp_2m.json"
    search = run_cli("search_schedule.py", "model=gmm", "sampler=dpmpp_2m", "nfes=[4]", "num_noises=32", "iterations=5",
                     "write=true", f"table={table}", f"out_dir={tmp_path / 'search'}")
    assert search.returncode == 0, search.stderr[-3000:]
    entry = json.loads(table.read_text())["by_nfe"]["4"]
    assert entry["command"].startswith("python scripts/search_schedule.py model=gmm sampler=dpmpp_2m")
    assert entry["held_out_ode_error"] <= entry["default_held_out_ode_error"]
    done = run_cli("sample.py", "model=gmm", "sampler=dpmpp_2m", "nfe=4", "schedule.kind=table",
                   f"schedule.table={table}", "num_samples=8", f"out_dir={tmp_path / 'sample'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == f"schedule: table, the searched grid for NFE 4 ({table})"
    import numpy as np
    assert np.load(tmp_path / "sample" / "samples.npz")["sigmas"].tolist() == entry["sigmas"]


def test_a_pipeline_scheduler_plans_on_a_table_named_by_file_or_by_model(model_with_table):
    from fewstep.pipelines import FewstepScheduler

    root, _ = model_with_table
    config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    for given in (str(root / "schedules" / "dpmpp_2m.json"), str(root)):
        scheduler = FewstepScheduler.from_config(config, sampler="dpmpp_2m", schedule_table=given)
        scheduler.set_timesteps(4)
        assert scheduler.grid.tolist() == GRID and len(scheduler.timesteps) == 4
        with pytest.raises(ValueError, match="has no grid of 6 steps: it has 4"):
            scheduler.set_timesteps(6)
    with pytest.raises(ValueError, match="holds grids of sampler dpmpp_2m"):
        FewstepScheduler.from_config(config, sampler="ddim", schedule_table=str(root / "schedules" / "dpmpp_2m.json"),
                                     ).set_timesteps(4)
    with pytest.raises(ValueError, match="takes no schedule='logsnr'"):
        FewstepScheduler.from_config(config, sampler="dpmpp_2m", schedule="logsnr", schedule_table=str(root))


def test_a_grid_with_a_point_inserted_splits_its_widest_gap():
    grid = torch.tensor([80.0, 10.0, 5.0, 0.0], dtype=torch.float64)
    assert with_point_inserted(grid).tolist() == pytest.approx([80.0, 800 ** 0.5, 10.0, 5.0, 0.0])
    ending = torch.tensor([10.0, 5.0, 0.01], dtype=torch.float64)
    assert with_point_inserted(ending).tolist() == pytest.approx([10.0, 5.0, 0.05 ** 0.5, 0.01])
    assert with_point_inserted(torch.tensor([10.0, 0.1, 0.0], dtype=torch.float64)).tolist() == pytest.approx(
        [10.0, 1.0, 0.1, 0.0])  # two positive sigmas are enough
    assert with_point_inserted(torch.tensor([10.0, 0.0], dtype=torch.float64)).tolist() == [10.0, 0.0]  # one is not


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"])
def test_the_embedded_model_ships_a_searched_grid_for_each_sampler_at_nfe_3_to_10(name):
    from fewstep.cli.sampling import planned_grid

    denoiser = samplers.from_pretrained("digits_ddpm")
    path = schedule_tables.default_path(denoiser, name)
    assert sorted(schedule_tables.entries(path)) == list(range(3, 11))
    cfg = compose_sample(f"sampler={name}")  # composed once (a second each): `nfe=N` set on it as the override does
    for nfe in range(3, 11):
        cfg.nfe = nfe
        steps, sigmas, line = planned_grid(cfg, denoiser)
        assert line.startswith("schedule: auto, the searched grid for NFE") and samplers.nfe(name, sigmas) <= nfe
        assert json.loads(path.read_text())["by_nfe"][str(nfe)]["command"].startswith(
            f"python scripts/search_schedule.py sampler={name}")


def test_the_search_says_each_phase_and_shows_the_references_and_the_refinement_as_bars(search_gmm, capsys, caplog):
    with caplog.at_level("INFO", logger=schedule_search.__name__):
        (result,) = run_search("euler", search_gmm, [3], num_noises=4, iterations=2)
    said = caplog.messages
    assert said[0] == "dopri5 references of 8 noises (rtol 1e-05, atol 1e-05)" and said[1].startswith(
        "dopri5 references of 8 noises: ")
    assert f"euler NFE 3: refining {result.start.how} (2 Adam steps)" in said and said[-1].startswith("euler NFE 3: refined")
    bars = capsys.readouterr().err
    assert bars.count("dopri5 reference: ") >= 2 and "NFE" in bars and "refine euler: " in bars
    next(run_search("euler", search_gmm, [3], num_noises=4, iterations=2, log=lambda line: None, progress=False))
    assert capsys.readouterr().err == ""
