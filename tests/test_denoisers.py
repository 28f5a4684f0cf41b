"""Model adapters: each must give back the data point exactly when the network is an oracle."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from fewstep import samplers
from helpers import tiny_unet

X0 = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
SIGMAS = [157.0, 10.0, 1.0, 0.3, 0.02]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


class VPOracle(torch.nn.Module):
    """The exact network of a data set holding the one image X0, for each prediction type."""

    def __init__(self, alphas_cumprod, prediction_type):
        super().__init__()
        self.abar, self.kind = alphas_cumprod.double(), prediction_type
        self.register_buffer("precision", torch.zeros((), dtype=torch.float64))  # the adapter feeds float64

    def forward(self, x_vp, t):
        # the continuous abar of the fractional timestep t, from the interpolated log sigma
        log_sig = torch.log(((1 - self.abar) / self.abar).sqrt())
        ls = np.interp(t.double().numpy(), np.arange(len(log_sig)), log_sig.numpy())
        abar = torch.from_numpy(1 / (1 + np.exp(2 * ls))).reshape(-1, 1, 1, 1)
        x_vp = x_vp.double()
        eps = (x_vp - abar.sqrt() * X0) / (1 - abar).sqrt()
        return {"epsilon": eps, "sample": X0.expand_as(x_vp),
                "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * X0}[self.kind]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_adapter_recovers_the_data_for_every_prediction_type(prediction_type):
    abar = DDPMScheduler().alphas_cumprod
    denoiser = samplers.DiffusersUNetDenoiser(VPOracle(abar, prediction_type), abar, prediction_type)
    for sigma in SIGMAS:
        x = X0 + sigma * torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(denoiser(x, sigma), X0.expand_as(x), atol=1e-8), sigma


def test_fractional_timesteps_interpolate_log_sigma():
    abar = DDPMScheduler().alphas_cumprod
    denoiser = samplers.DiffusersUNetDenoiser(tiny_unet(), abar)
    table = ((1 - abar.double()) / abar.double()).sqrt()
    on_table = denoiser.timestep(table[[0, 17, 500, 999]])
    assert torch.allclose(on_table, torch.tensor([0.0, 17.0, 500.0, 999.0], dtype=torch.float64), atol=1e-9)
    between = denoiser.timestep((table[17].log() * 0.25 + table[18].log() * 0.75).exp().reshape(1))
    assert torch.allclose(between, torch.tensor([17.75], dtype=torch.float64))
    assert denoiser.timestep(torch.tensor([1e6, 1e-9])).tolist() == [999.0, 0.0]


def test_flow_adapter_recovers_the_data():
    # velocity of the one-point data set X0 (t = 0 data, t = 1 noise): v = (x_t - X0) / t
    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.precision = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x_t, t):
            return (x_t - X0) / t.reshape(-1, 1, 1, 1)

    denoiser = samplers.FlowDenoiser(Velocity())
    for sigma in SIGMAS:
        x = X0 + sigma * torch.randn(3, 1, 8, 8, dtype=torch.float64)
        assert torch.allclose(denoiser(x, sigma), X0.expand_as(x), atol=1e-8)


def test_gmm_denoiser_is_the_posterior_mean():
    """Against numerical integration of E[x0 | x] for a 1-D mixture."""
    means, stds, weights = [[-1.0], [2.0]], [0.5, 0.3], [0.4, 0.6]
    gmm = samplers.GMMDenoiser(means, stds, weights)
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    prior = sum(w * torch.exp(-(grid - m[0]) ** 2 / (2 * s * s)) / s for m, s, w in zip(means, stds, weights))
    for sigma in [0.1, 1.0, 5.0]:
        for x in [-2.0, 0.3, 1.7]:
            post = prior * torch.exp(-(x - grid) ** 2 / (2 * sigma ** 2))
            expected = (grid * post).sum() / post.sum()
            got = gmm(torch.tensor([[x]], dtype=torch.float64), sigma)
            assert abs(got.item() - expected.item()) < 1e-6, (sigma, x)


def test_gmm_sample_draws_from_the_mixture(gmm):
    x = gmm.sample(100_000, generator=torch.Generator().manual_seed(0))
    expected_mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert torch.allclose(x.mean(0), expected_mean, atol=0.02)


@pytest.fixture
def saved_pipeline(tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_from_pretrained_reads_a_pipeline_directory(saved_pipeline):
    denoiser = samplers.DiffusersUNetDenoiser.from_pretrained(saved_pipeline)
    assert denoiser.prediction_type == "v_prediction"
    assert denoiser.sample_shape == (1, 8, 8)
    assert torch.allclose(denoiser.alphas_cumprod, DDPMScheduler().alphas_cumprod.double())


def test_from_pretrained_reads_a_unet_directory_with_its_scheduler_config(saved_pipeline, tmp_path):
    unet_dir = saved_pipeline / "unet"
    (unet_dir / "scheduler_config.json").write_text((saved_pipeline / "scheduler" / "scheduler_config.json").read_text())
    denoiser = samplers.DiffusersUNetDenoiser.from_pretrained(unet_dir)
    x = torch.randn(2, 1, 8, 8)
    reference = samplers.DiffusersUNetDenoiser.from_pretrained(saved_pipeline)
    assert torch.equal(denoiser(x, 3.0), reference(x, 3.0))


@pytest.mark.parametrize("change, message", [
    (lambda p: p / "missing", "model path does not exist"),
    (lambda p: (p / "scheduler" / "scheduler_config.json").unlink() or p, "no scheduler_config.json"),
])
def test_from_pretrained_errors_name_the_path(saved_pipeline, change, message):
    with pytest.raises(FileNotFoundError, match=message):
        samplers.DiffusersUNetDenoiser.from_pretrained(change(saved_pipeline))


def test_scheduler_config_without_a_noise_table_is_refused(saved_pipeline):
    with pytest.raises(ValueError, match="no noise table"):
        samplers.DiffusersUNetDenoiser.from_config(tiny_unet(), {"prediction_type": "epsilon"})


def test_unsupported_prediction_type_is_refused(saved_pipeline):
    path = saved_pipeline / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "flow"}))
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow'"):
        samplers.DiffusersUNetDenoiser.from_pretrained(saved_pipeline)


@pytest.mark.parametrize("shape, message", [((3, 8, 8), "takes 1 channels, got 3"), ((1, 9, 8), "divisible by 2, got \\(9, 8\\)")])
def test_image_sizes_the_unet_cannot_take_are_refused(shape, message):
    denoiser = samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod)
    with pytest.raises(ValueError, match=message):
        denoiser.check_shape(shape)


def test_sigma_of_timestep_inverts_fractional_timestep():
    from fewstep.samplers.spaces import fractional_timestep, sigma_of_timestep

    log_sigmas = samplers.spaces.sigmas_from_alphas_cumprod(DDPMScheduler().alphas_cumprod).log()
    sigmas = torch.tensor([0.0101, 0.5, 3.0, 80.0, 157.0], dtype=torch.float64)
    back = sigma_of_timestep(fractional_timestep(sigmas, log_sigmas), log_sigmas)
    assert torch.allclose(back, sigmas, rtol=1e-9)


def test_a_bfloat16_unet_keeps_the_float64_table():
    abar = DDPMScheduler().alphas_cumprod
    denoiser = samplers.DiffusersUNetDenoiser(tiny_unet(), abar).to(torch.bfloat16)
    assert denoiser.log_sigmas.dtype == torch.float64
    assert denoiser.timestep(torch.tensor([denoiser.sigma_max])).item() == 999.0
    assert denoiser(torch.randn(2, 1, 8, 8), 3.0).dtype == torch.float32


def test_an_exported_rectified_flow_loads_as_a_flow_denoiser(tmp_path):
    """RectifiedFlowObjective exports a pipeline directory with FlowMatchEulerDiscreteScheduler;
    samplers.from_pretrained gives a FlowDenoiser whose UNet sees t * 1000, and the VP loader refuses it."""
    from fewstep.flows import RectifiedFlowObjective

    net = tiny_unet()
    RectifiedFlowObjective().export({"net": net}, tmp_path / "flow")
    denoiser = samplers.from_pretrained(tmp_path / "flow")
    assert isinstance(denoiser, samplers.FlowDenoiser) and denoiser.sample_shape == (1, 8, 8)
    x, sigma = torch.randn(2, 1, 8, 8), 3.0
    t = sigma / (1 + sigma)
    with torch.no_grad():
        expected = x / (1 + sigma) - t * net(x / (1 + sigma), torch.full((2,), t * 1000.0)).sample
        assert torch.allclose(denoiser(x, sigma), expected, atol=1e-6)
    with pytest.raises(ValueError, match="is a flow-matching model .* load it with samplers.from_pretrained"):
        samplers.DiffusersUNetDenoiser.from_pretrained(tmp_path / "flow")
    with pytest.raises(ValueError, match="the model takes image sizes divisible by 2, got \\(7, 7\\)"):
        denoiser.check_shape((1, 7, 7))


def test_the_shipped_rectified_flow_loads_by_name():
    denoiser = samplers.from_pretrained("digits_rf1")
    assert isinstance(denoiser, samplers.FlowDenoiser)
    assert denoiser.time_scale == 1000.0 and denoiser.sample_shape == (1, 16, 16)
    x = samplers.sample("euler", denoiser, torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
                        samplers.get_sigmas("flow_uniform", 2, denoiser.sigma_min, denoiser.sigma_max))
    assert x.shape == (2, 1, 16, 16) and 0.2 < float(x.std()) < 2.0
