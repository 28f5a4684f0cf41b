"""Every shipped implementation keeps its contract (samplers.contracts, training.objective): the
denoisers, each fixed-grid sampler's step generator, AMED's predictor, and every objective, whose
settings are the plain values run.json records and whose losses take the rows' seeds."""
import inspect
import json

import pytest
import torch
from diffusers import DDPMScheduler

from helpers import tiny_unet
from fewstep import samplers
from fewstep.flows import (DiffusionObjective, DistillationObjective, MLPVelocity, PairsDataset, RectifiedFlowObjective,
                           write_pairs)
from fewstep.gan import GANObjective
from fewstep.samplers import Denoiser, StepGenerator, StepPredictor
from fewstep.training import Objective
from fewstep.samplers.guidance import class_guided
from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset
from fewstep.tuning.amed_predictor import AMEDPredictor


def denoisers(gmm):
    return {"gmm": gmm, "vp": samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod),
            "flow": samplers.FlowDenoiser(MLPVelocity(dim=2, hidden=8)), "shipped": samplers.from_pretrained("digits_rf1")}


def test_every_denoiser_is_one_and_answers_in_the_shape_it_is_asked(gmm):
    for name, d in denoisers(gmm).items():
        assert isinstance(d, Denoiser), name
        x = torch.randn(3, *d.sample_shape, dtype=torch.float64)
        assert d(x, torch.tensor(2.0, dtype=torch.float64)).shape == x.shape, name
        assert 0 < d.sigma_min < d.sigma_max, name
    assert not isinstance(object(), Denoiser)


@pytest.mark.parametrize("name", samplers.FIXED_GRID_NAMES)
def test_every_fixed_grid_sampler_is_a_step_generator_that_asks_for_d_and_returns_the_sample(gmm, name):
    run = samplers.SOLVERS[name].run
    assert isinstance(run, StepGenerator)
    sigmas = samplers.get_sigmas("karras", 3, 0.01, 10.0)
    x = torch.randn(4, 2, dtype=torch.float64) * 10
    steps, asked = run(x, sigmas), 0
    request = next(steps)
    try:
        while True:
            point, sigma = request
            assert point.shape == x.shape and torch.as_tensor(sigma).ndim in (0, 1)
            asked += 1
            request = steps.send((point, gmm(point, sigma)))
    except StopIteration as done:
        assert done.value.shape == x.shape
    assert asked == samplers.nfe(name, sigmas)


def test_amed_s_predictor_is_a_step_predictor_and_a_path_is_not():
    assert isinstance(AMEDPredictor(sampler="amed"), StepPredictor)
    assert not isinstance("runs/amed/model", StepPredictor)


def objectives(gmm):
    return [DiffusionObjective(), RectifiedFlowObjective(), DistillationObjective(), GANObjective(),
            GANObjective(critic_loss="wgan_gp", generator_loss="plain", penalty_weight=10.0),
            AMEDDistillation(gmm, samplers.get_sigmas("karras", 3, gmm.sigma_min, 80.0))]


def test_every_objective_is_one_and_its_settings_are_plain_values(gmm):
    for objective in objectives(gmm):
        assert isinstance(objective, Objective), type(objective).__name__
        assert list(inspect.signature(objective.losses).parameters)[2:] == ["step", "seeds"], type(objective).__name__
        settings = objective.settings()
        assert settings and json.loads(json.dumps(settings)) == settings
        assert all(v is None or isinstance(v, (str, int, float, bool)) for v in settings.values())
    assert DiffusionObjective(beta_end=0.03).settings()["beta_end"] == 0.03


def test_every_data_set_that_records_its_origin_gives_plain_values(gmm, tmp_path):
    """What run.json records of reflow pairs and of AMED's noise (`training.data.data_record`)."""
    write_pairs(gmm, "euler", [80.0, 1.0, 0.0], (2,), range(3), tmp_path, shard_size=2)
    for data in (PairsDataset(tmp_path), NoiseDataset((2,), size=8, seed=3)):
        settings = data.settings()
        assert settings and json.loads(json.dumps(settings)) == settings
    assert PairsDataset(tmp_path).settings()["fingerprint"] == samplers.fingerprint(gmm)


def test_a_guided_denoiser_is_one_and_answers_in_the_shape_it_is_asked():
    unet = tiny_unet(num_class_embeds=3)
    guided = class_guided(samplers.DiffusersUNetDenoiser(unet, DDPMScheduler().alphas_cumprod), 2.0)
    assert isinstance(guided, Denoiser)
    x = torch.randn(3, *guided.sample_shape)
    assert guided(x, torch.tensor(2.0), class_labels=torch.tensor([0, 1, 0])).shape == x.shape
