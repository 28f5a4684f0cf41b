"""samplers/learned.py and tuning/learned_solver.py, tuning/solver_tables.py: the learned multistep solver, its
fit on teacher solutions and its table beside the model."""
import json

import numpy as np
import pytest
import torch
import yaml

from fewstep import samplers
from fewstep.samplers.denoisers import GMMDenoiser
from fewstep.samplers.learned import dpmpp_2m_weights
from fewstep.samplers.noise import seeded_noise
from fewstep.tuning import solver_tables
from fewstep.tuning.learned_solver import check_noises, fit_solver
from fewstep.tuning.schedule_search import ode_error, ode_reference
from helpers import ROOT, run_cli


@pytest.fixture(scope="module")
def mixture():
    torch.manual_seed(0)
    return GMMDenoiser(torch.randn(8, 2) * 2, torch.full((8,), 0.1))


@pytest.fixture(scope="module")
def teacher(mixture):
    noise, held_out = seeded_noise(range(64), (2,)), seeded_noise(range(64, 128), (2,))
    return noise, ode_reference(mixture, noise), held_out, ode_reference(mixture, held_out)


@pytest.mark.parametrize("ending, afs", [("zero", False), ("zero", True), ("sigma_min", False)])
def test_without_weights_it_is_dpm_solver_2m(mixture, ending, afs):
    sigmas = samplers.get_sigmas("karras", 6, sigma_min=0.01, sigma_max=80.0, final_sigmas_type=ending)
    noise = torch.randn(16, 2, dtype=torch.float64)
    ours = samplers.sample("learned", mixture, noise, sigmas, afs=afs)
    torch.testing.assert_close(ours, samplers.sample("dpmpp_2m", mixture, noise, sigmas, afs=afs), rtol=0, atol=1e-12)
    third_order_zeros = samplers.sample("learned", mixture, noise, sigmas, afs=afs,
                                        weights=dpmpp_2m_weights(sigmas, order=3))
    torch.testing.assert_close(third_order_zeros, ours, rtol=0, atol=1e-12)


def test_first_order_weights_are_ddim(mixture):
    sigmas = samplers.get_sigmas("karras", 5, sigma_min=0.01, sigma_max=80.0)
    noise = torch.randn(8, 2, dtype=torch.float64)
    first = samplers.sample("learned", mixture, noise, sigmas, weights=torch.ones(5, 1))
    torch.testing.assert_close(first, samplers.sample("ddim", mixture, noise, sigmas), rtol=0, atol=1e-12)
    assert samplers.nfe("learned", sigmas) == 5


def test_the_fit_starts_at_dpm_solver_and_beats_it_on_held_out_noises(mixture, teacher):
    fit = fit_solver(mixture, 4, *teacher, order=3, iterations=60, lr=0.02, every=20, progress=False)
    start_train = fit.curve[0][1]
    assert fit.curve[0][0] == 0 and [c[0] for c in fit.curve] == [0, 20, 40, 60]
    assert fit.kept and fit.held_out_error < 0.8 * fit.start_held_out_error
    assert min(c[1] for c in fit.curve) < start_train
    again = ode_error("learned", mixture, teacher[2], teacher[3], fit.sigmas, {"weights": fit.weights}).item()
    assert again == pytest.approx(fit.held_out_error)
    assert fit.sigmas.shape == (5,) and fit.weights.shape == (4, 3)


def test_too_few_noises_a_model_without_a_range_and_a_diverging_fit_are_refused(mixture, teacher):
    with pytest.raises(ValueError, match=r"10 noises are too few to fit the 20 parameters of the learned solver "
                                         r"\(5 steps of order 3 and the grid\): use at least 20"):
        check_noises(10, 5, 3)
    plain = lambda x, sigma: x  # noqa: E731  (a denoiser without a sigma range)
    with pytest.raises(ValueError, match=r"the teacher .* needs the model's sigma range; function has sigma_min=None"):
        fit_solver(plain, 3, *teacher, progress=False)

    class NaNWithGradients(torch.nn.Module):
        sigma_min, sigma_max, sample_shape = mixture.sigma_min, mixture.sigma_max, mixture.sample_shape

        def forward(self, x, sigma):
            return mixture(x, sigma) * (torch.nan if torch.is_grad_enabled() else 1.0)

    with pytest.raises(FloatingPointError, match=r"the learned solver's fit at NFE 3 diverged at iteration 0 "
                                                 r"\(ODE error nan\): lower lr=0.01"):
        fit_solver(NaNWithGradients(), 3, *teacher, progress=False)


def test_bad_weights_are_refused_in_one_line(mixture):
    with pytest.raises(ValueError, match=r"weights have shape \(2, 2\); a grid of 3 steps needs \(3, order\)"):
        samplers.sample("learned", mixture, torch.randn(2, 2), [10.0, 1.0, 0.1, 0.0], weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"weights are not finite"):
        samplers.sample("learned", mixture, torch.randn(2, 2), [10.0, 1.0, 0.0], weights=[[1.0], [float("nan")]])


def test_a_table_keeps_each_nfe_and_refuses_another_model(mixture, teacher, tmp_path):
    path = tmp_path / "solvers" / "learned.json"
    fits = {nfe: fit_solver(mixture, nfe, *teacher, order=2, iterations=3, progress=False) for nfe in (3, 4)}
    for fit in fits.values():
        solver_tables.write(path, mixture, "gmm", fit, command="python fit")
    assert solver_tables.nfes(path) == [3, 4]
    sigmas, weights = solver_tables.lookup(path, mixture, 4)
    torch.testing.assert_close(weights, fits[4].weights)
    assert json.loads(path.read_text())["by_nfe"]["3"]["command"] == "python fit"
    with pytest.raises(ValueError, match=r"has no learned solver for NFE 5: it has NFE 3, 4"):
        solver_tables.lookup(path, mixture, 5)
    other = GMMDenoiser(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"was tuned for another model \(weights [0-9a-f]{16}\); this one's weights are"):
        solver_tables.lookup(path, other, 3)
    before = path.read_text()
    with pytest.raises(ValueError, match=r"was tuned for another model"):
        solver_tables.write(path, other, "other", fits[3])
    assert path.read_text() == before


# -- the command line: scripts/fit_solver.py -----------------------------------------------------------
def test_fit_solver_writes_the_fits_that_win_and_refuses_what_it_cannot_fit(tmp_path):
    table = tmp_path / "learned.json"
    done = run_cli("fit_solver.py", "model=gmm", "nfes=[3]", "num_noises=32", "iterations=20", "write=true",
                   f"table={table}", f"out_dir={tmp_path}/run")
    assert done.returncode == 0, done.stderr
    assert "learned NFE 3: held-out ODE error" in done.stdout
    fitted = json.loads((tmp_path / "run" / "fit-learned.json").read_text())["3"]
    assert fitted["kept"] and fitted["held_out_ode_error"] < fitted["start"]["held_out_ode_error"]
    assert json.loads(table.read_text())["by_nfe"]["3"]["command"].startswith("python scripts/fit_solver.py model=gmm")
    before = table.read_text()
    refused = run_cli("fit_solver.py", "model=gmm", "nfes=[10]", "num_noises=8", "write=true", f"table={table}",
                      f"out_dir={tmp_path}/refused")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == ("error: 8 noises are too few to fit the 40 parameters of the "
                                                        "learned solver (10 steps of order 3 and the grid): use at least 40")
    assert not (tmp_path / "refused").exists() and table.read_text() == before

    used = run_cli("sample.py", "model=gmm", "sampler=learned", "nfe=3", f"sampler.options.weights={table}",
                   "num_samples=6", "seed=3", f"out_dir={tmp_path}/sampled")
    assert used.returncode == 0, used.stderr
    assert f"schedule: the grid the learned solver was fitted on for NFE 3 ({table})" in used.stdout
    assert "learned {'weights': 'fitted (3, 3)', 'afs': False}: 3 steps, NFE 3" in used.stdout
    conf = yaml.safe_load((ROOT / "conf" / "model" / "gmm.yaml").read_text())
    mixture = GMMDenoiser(conf["means"], conf["stds"], conf["weights"])
    sigmas, weights = solver_tables.lookup(table, mixture, 3)
    expected = torch.cat(list(samplers.sample_seeds("learned", mixture, range(3, 9), sigmas, (2,),
                                                    options={"weights": weights})))
    got = torch.from_numpy(np.load(tmp_path / "sampled" / "samples.npz")["samples"])
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-6, atol=1e-6)
    other_grid = run_cli("sample.py", "model=gmm", "sampler=learned", "nfe=3", f"sampler.options.weights={table}",
                         "schedule.rho=5", f"out_dir={tmp_path}/grid")
    assert other_grid.returncode == 2 and other_grid.stderr.strip().splitlines()[-1] == (
        f"error: the learned solver {table} samples on the grid it was fitted on: drop schedule.rho=5.0")
