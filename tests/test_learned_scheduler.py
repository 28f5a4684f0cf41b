"""The learned multistep solver inside pipelines: `FewstepScheduler(sampler="learned", solver_table=...)`
plans the table's grid of the NFE asked and runs that entry's weights, equal to `samplers.sample` on the
same weights; without a table it is DPM-Solver++(2M); a table it cannot use is refused in one line."""
import json
import math
import re
import shutil

import pytest
import torch
from diffusers import DDPMPipeline

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.tuning import solver_tables
from fewstep.tuning.learned_solver import SolverFit
from helpers import TABLE, NoiseLikeUNet, range_gap, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread

# two hand-made fits (weights unlike DPM-Solver++(2M)'s, so using them or not shows)
GRIDS = {4: [80.0, 9.0, 1.5, 0.25, 0.0], 6: [100.0, 30.0, 8.0, 2.0, 0.6, 0.12, 0.0]}
WEIGHTS = {4: [[1.0, 0.0, 0.0], [1.6, -0.7, 0.1], [1.4, -0.5, 0.08], [1.1, -0.12, 0.0]],
           6: [[1.0, 0.0, 0.0], [1.3, -0.3, 0.0], [1.5, -0.6, 0.1], [1.4, -0.5, 0.1], [1.2, -0.25, 0.05],
               [1.0, 0.0, 0.0]]}


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def denoiser(unet):
    return samplers.DiffusersUNetDenoiser(unet, FewstepScheduler(**TABLE).alphas_cumprod)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, denoiser):
    """A model directory holding `solvers/learned.json` with the fits at NFE 4 and 6."""
    root = tmp_path_factory.mktemp("model")
    for nfe in GRIDS:
        fit = SolverFit(nfe, torch.tensor(GRIDS[nfe], dtype=torch.float64), torch.tensor(WEIGHTS[nfe],
                        dtype=torch.float64), 0.1, 0.2, "karras", True, 1.0)
        solver_tables.write(root / "solvers" / "learned.json", denoiser, "tiny", fit, command="test")
    return root


@torch.no_grad()
def loop(scheduler, unet, nfe, z):
    """A diffusers-style sampling loop (as DDPMPipeline's) from the pipeline's noise `z`."""
    scheduler.set_timesteps(nfe)
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def noise():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def reference(denoiser, nfe, z, weights):
    """`samplers.sample` from the same start: the pipeline's `z` is `x / sqrt(1 + sigma_0^2)`, and
    `sample` scales its noise by `sigma_0`."""
    sigma0 = GRIDS[nfe][0]
    return samplers.sample("learned", denoiser, z.double() * math.sqrt(1 + sigma0 ** 2) / sigma0,
                           torch.tensor(GRIDS[nfe], dtype=torch.float64), weights=weights)


@pytest.mark.parametrize("nfe", [4, 6])
@pytest.mark.parametrize("given", ["file", "dir"])
def test_a_pipeline_loop_on_a_solver_table_equals_samplers_sample_on_its_weights(unet, denoiser, model_dir,
                                                                                 nfe, given):
    table = model_dir if given == "dir" else model_dir / "solvers" / "learned.json"
    scheduler = FewstepScheduler(**TABLE, sampler="learned", solver_table=str(table))
    z = noise()
    result = loop(scheduler, unet, nfe, z)
    assert scheduler.grid.tolist() == GRIDS[nfe] and len(scheduler.timesteps) == nfe
    expected = reference(denoiser, nfe, z, torch.tensor(WEIGHTS[nfe]))
    assert range_gap(result.double(), expected) < 1e-5
    # the table's weights are what ran: DPM-Solver++(2M)'s on the same grid land far from it
    assert range_gap(reference(denoiser, nfe, z, None), expected) > 1e-2


def test_ddpm_pipeline_with_a_solver_table_equals_samplers_sample(model_dir):
    torch.manual_seed(0)
    unet = NoiseLikeUNet.from_config(tiny_unet().config).eval()  # samples in the picture range: the clamp hides little
    scheduler = FewstepScheduler(**TABLE, sampler="learned", solver_table=str(model_dir))
    denoiser = samplers.DiffusersUNetDenoiser(unet, scheduler.alphas_cumprod)
    images = DDPMPipeline(unet=unet, scheduler=scheduler)(batch_size=2, num_inference_steps=4, output_type="np",
                                                          generator=torch.Generator().manual_seed(0)).images
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # the pipeline's starting noise
    expected = (reference(denoiser, 4, z, torch.tensor(WEIGHTS[4])) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert 0.05 < ((expected > 0) & (expected < 1)).double().mean()  # not all clamped away
    assert (torch.from_numpy(images).double() - expected).abs().max() < 1e-5


@torch.no_grad()
def test_a_partial_start_runs_the_weights_of_the_steps_it_takes(unet, denoiser, model_dir):
    """img2img with strength < 1: from `timesteps[2]` on, the sampler runs `grid[2:]` with `weights[2:]`."""
    scheduler = FewstepScheduler(**TABLE, sampler="learned", solver_table=str(model_dir))
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(2)
    z = x = noise()
    for t in scheduler.timesteps[2:]:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    sigma0 = GRIDS[6][2]
    expected = samplers.sample("learned", denoiser, z.double() * math.sqrt(1 + sigma0 ** 2) / sigma0,
                               torch.tensor(GRIDS[6][2:]), weights=torch.tensor(WEIGHTS[6][2:]))
    assert range_gap(x.double(), expected) < 1e-5


def test_learned_without_a_table_is_dpm_solver_2m(unet):
    z = noise()
    learned = loop(FewstepScheduler(**TABLE, sampler="learned"), unet, 5, z)
    dpmpp_2m = loop(FewstepScheduler(**TABLE, sampler="dpmpp_2m"), unet, 5, z)
    assert range_gap(learned, dpmpp_2m) < 1e-5
    assert range_gap(learned, loop(FewstepScheduler(**TABLE, sampler="ddim"), unet, 5, z)) > 1e-3  # second order


def test_an_nfe_the_table_has_not_is_refused_naming_those_it_has(model_dir):
    scheduler = FewstepScheduler(**TABLE, sampler="learned", solver_table=str(model_dir))
    file = model_dir / "solvers" / "learned.json"
    with pytest.raises(ValueError, match=rf"^{file} has no learned solver for NFE 5: it has NFE 4, 6$"):
        scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match=r"^solver_table=.* gives the grid with its weights; set_timesteps takes "
                                         r"num_inference_steps \(an NFE it has\), not sigmas$"):
        scheduler.set_timesteps(sigmas=[80.0, 1.0, 0.0])


@pytest.mark.parametrize("extra, message", [
    ({"sampler": "dpmpp_2m"}, "holds a learned solver's grids and weights: it needs sampler='learned', "
                              "got sampler='dpmpp_2m'"),
    ({"schedule": "karras"}, "gives the whole grid; it takes no schedule='karras'"),
    ({"schedule_table": "x.json"}, "gives the whole grid; it takes no schedule_table"),
    ({"frozen_table": "x.json"}, "gives the whole grid; it takes no frozen_table"),
    ({"sampler_options": {"weights": [[1.0]]}}, "gives the weights: drop sampler_options weights"),
])
def test_a_solver_table_it_cannot_use_is_refused_at_construction(model_dir, extra, message):
    options = {"sampler": "learned", **extra}
    with pytest.raises(ValueError, match=f"^{re.escape(f'solver_table={model_dir} {message}')}$"):
        FewstepScheduler(**TABLE, solver_table=str(model_dir), **options)


def test_another_samplers_table_is_refused(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"sampler": "heun", "fingerprint": "x", "by_nfe": {}}))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 't.json'} holds a table of sampler heun, not of learned$"):
        FewstepScheduler(**TABLE, sampler="learned", solver_table=str(tmp_path / "t.json"))


def test_a_saved_scheduler_with_a_solver_table_loads_from_a_copied_folder(tmp_path, model_dir):
    shutil.copytree(model_dir, tmp_path / "model")
    scheduler = FewstepScheduler(**TABLE, sampler="learned", solver_table=str(tmp_path / "model"))
    scheduler.set_timesteps(4)
    scheduler.save_pretrained(tmp_path / "saved")
    shutil.copytree(tmp_path / "saved", tmp_path / "moved")
    shutil.rmtree(tmp_path / "saved")
    shutil.rmtree(tmp_path / "model")
    assert json.loads((tmp_path / "moved" / "scheduler_config.json").read_text())["solver_table"] == "solver_table.json"
    loaded = FewstepScheduler.from_pretrained(tmp_path / "moved")
    loaded.set_timesteps(4)
    assert torch.equal(loaded.grid, scheduler.grid) and torch.equal(loaded.timesteps, scheduler.timesteps)
    assert torch.equal(loaded._weights, scheduler._weights)
