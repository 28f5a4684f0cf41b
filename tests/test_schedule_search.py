"""The schedule search (samplers.schedule_search), its tables next to the model
(samplers.schedule_tables) and schedule.kind=auto / table in the sampling configs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from fewstep import samplers
from fewstep.samplers import schedule_tables
from fewstep.samplers.schedule_search import (_GridParameters, lever_grids, ode_error, ode_reference, refine,
                                              run_search, seeded_noise)


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


@pytest.mark.parametrize("ending", ["zero", "sigma_min"])
def test_grid_parameters_reproduce_the_start_and_keep_any_grid_inside_the_range(ending):
    start = samplers.get_sigmas("karras", 5, 0.01, 60.0, final_sigmas_type=ending)
    params = _GridParameters(start, sigma_min=0.01, sigma_max=150.0, lowest_top=20.0)
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


def test_a_search_that_produces_nan_says_so(search_gmm):
    class Broken(torch.nn.Module):
        sigma_min, sigma_max, sample_shape = 0.002, 80.0, (2,)

        def forward(self, x, sigma):
            out = search_gmm(x, sigma)
            return out if float(sigma) > 1 else out * float("nan")

    with pytest.raises(FloatingPointError, match="NaN"):
        next(run_search("euler", Broken(), [3], num_noises=4, log=lambda line: None))


# -- tables ---------------------------------------------------------------------------------------
GRID = [20.0, 5.0, 1.0, 0.2, 0.0]


def test_within_a_budget_the_grid_with_the_lowest_held_out_error_is_taken(search_gmm, tmp_path):
    path = tmp_path / "heun.json"
    for nfe, grid, error in ((3, [20.0, 1.0, 0.0], 0.2), (4, [20.0, 1.0, 0.01], 0.5), (5, [20.0, 3.0, 0.5, 0.0], 0.1)):
        schedule_tables.write(path, search_gmm, "heun", {}, "gmm", "ode_error", nfe, grid, held_out_ode_error=error)
    assert schedule_tables.best_within(path, search_gmm, "heun", {}, 4)[0] == 3  # Heun's even NFE did worse
    assert schedule_tables.best_within(path, search_gmm, "heun", {}, 9)[0] == 5
    assert schedule_tables.best_within(path, search_gmm, "heun", {}, 2) is None


def test_a_table_gives_back_its_grid_and_refuses_another_model_sampler_or_nfe(search_gmm, tmp_path):
    path = tmp_path / "ddim.json"
    schedule_tables.write(path, search_gmm, "ddim", {"eta": 0.0}, "gmm", "ode_error", 4, GRID, command="by hand")
    schedule_tables.write(path, search_gmm, "ddim", {"eta": 0.0}, "gmm", "ode_error", 2, [20.0, 1.0, 0.0])
    assert samplers.schedule_tables.lookup(path, search_gmm, "ddim", {"eta": 0.0}, 4).tolist() == GRID
    assert sorted(schedule_tables.entries(path)) == [2, 4]
    with pytest.raises(ValueError, match="has no grid for NFE 5: it has NFE 2, 4"):
        schedule_tables.lookup(path, search_gmm, "ddim", {"eta": 0.0}, 5)
    with pytest.raises(ValueError, match="holds grids of sampler ddim"):
        schedule_tables.lookup(path, search_gmm, "euler", {}, 4)
    other = samplers.GMMDenoiser(means=[[0.0, 0.0]], stds=[1.0])
    with pytest.raises(ValueError, match="searched for another model"):
        schedule_tables.lookup(path, other, "ddim", {"eta": 0.0}, 4)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="another model or sampler"):
        schedule_tables.write(path, other, "ddim", {"eta": 0.0}, "other", "ode_error", 3, GRID[1:])
    assert path.read_bytes() == before  # nothing already written is lost


@pytest.mark.parametrize("grid, message", [([20.0, 5.0, 5.0, 0.2, 0.0], "strictly decreasing"),
                                           ([200.0, 5.0, 1.0, 0.2, 0.0], "above the model's sigma_max"),
                                           ([20.0, 5.0, 1.0, 0.0], "costs ddim 3 NFE, not 4")])
def test_a_table_with_a_grid_the_model_cannot_take_is_refused(search_gmm, tmp_path, grid, message):
    path = tmp_path / "ddim.json"
    schedule_tables.write(path, search_gmm, "ddim", {}, "gmm", "ode_error", 4, GRID)
    table = json.loads(path.read_text())
    table["by_nfe"]["4"]["sigmas"] = grid
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match=message):
        schedule_tables.lookup(path, search_gmm, "ddim", {}, 4)


# -- schedule.kind auto and table in the sampling configs -----------------------------------------
def compose_sample(*overrides):
    from hydra import compose, initialize_config_dir

    from fewstep.samplers import config as _schema  # noqa: F401  (registers sample_schema)

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
    from fewstep.samplers.config import planned_grid

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
    """search_schedule.py on the analytic mixture, write=true into a table file, then sample.py
    with schedule.kind=table samples on exactly that grid and says so in its first line."""
    table = tmp_path / "gmm-dpmpp_2m.json"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    search = subprocess.run([sys.executable, str(ROOT / "scripts" / "search_schedule.py"), "model=gmm",
                             "sampler=dpmpp_2m", "nfes=[4]", "num_noises=32", "iterations=5", "write=true",
                             f"table={table}", f"out_dir={tmp_path / 'search'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr[-3000:]
    entry = json.loads(table.read_text())["by_nfe"]["4"]
    assert entry["command"].startswith("python scripts/search_schedule.py model=gmm sampler=dpmpp_2m")
    assert entry["held_out_ode_error"] <= entry["default_held_out_ode_error"]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), "model=gmm", "sampler=dpmpp_2m",
                           "nfe=4", "schedule.kind=table", f"schedule.table={table}", "num_samples=8",
                           f"out_dir={tmp_path / 'sample'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == f"schedule: table, the searched grid for NFE 4 ({table})"
    import numpy as np
    assert np.load(tmp_path / "sample" / "samples.npz")["sigmas"].tolist() == entry["sigmas"]


def test_a_pipeline_scheduler_plans_on_a_table_named_by_file_or_by_model(model_with_table):
    from fewstep.samplers import FewstepScheduler

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
    from fewstep.samplers.schedule_search import with_point_inserted

    grid = torch.tensor([80.0, 10.0, 5.0, 0.0], dtype=torch.float64)
    assert with_point_inserted(grid).tolist() == pytest.approx([80.0, 800 ** 0.5, 10.0, 5.0, 0.0])
    ending = torch.tensor([10.0, 5.0, 0.01], dtype=torch.float64)
    assert with_point_inserted(ending).tolist() == pytest.approx([10.0, 5.0, 0.05 ** 0.5, 0.01])


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"])
def test_the_embedded_model_ships_a_searched_grid_for_each_sampler_at_nfe_3_to_10(name):
    denoiser = samplers.from_pretrained("digits_ddpm")
    path = schedule_tables.default_path(denoiser, name)
    assert sorted(schedule_tables.entries(path)) == list(range(3, 11))
    for nfe in range(3, 11):
        steps, sigmas, line = grid_of(f"sampler={name}", f"nfe={nfe}", model=denoiser)
        assert line.startswith("schedule: auto, the searched grid for NFE") and samplers.nfe(name, sigmas) <= nfe
        assert json.loads(path.read_text())["by_nfe"][str(nfe)]["command"].startswith(
            f"python scripts/search_schedule.py sampler={name}")
