"""The rectified-flow loss and objective (x_t = (1 - t) x0 + t eps, v = eps - x0)."""
import pytest
import torch

from fewstep.flows import RectifiedFlowObjective, rectified_flow_loss
from fewstep.samplers.noise import generators


class Recorder(torch.nn.Module):
    """A velocity model that returns `scale * x_t` and records what it was called with."""

    def __init__(self, scale=0.5):
        super().__init__()
        self.scale, self.calls = scale, []

    def forward(self, x_t, t):
        self.calls.append((x_t.clone(), t.clone()))
        return self.scale * x_t


def test_the_loss_is_the_mean_squared_velocity_error_at_the_interpolate():
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g), torch.tensor([0.0, 0.3, 1.0])
    model = Recorder()
    loss = rectified_flow_loss(model, x0, noise, t, time_scale=1000.0)
    x_t = torch.stack([(1 - ti) * a + ti * b for ti, a, b in zip(t, x0, noise)])
    assert torch.allclose(model.calls[0][0], x_t) and torch.equal(model.calls[0][1], t * 1000.0)
    expected = sum(((0.5 * xt - (b - a)) ** 2).sum() for xt, a, b in zip(x_t, x0, noise)) / x0.numel()
    assert torch.allclose(loss, expected)
    # the exact velocity field of a data set holding one point, v(x_t, t) = (x_t - x0) / t, has zero loss
    t = torch.tensor([0.2, 0.7])
    point = x0[:1].expand(2, -1, -1, -1)
    exact = lambda x_t, t: (x_t - point) / t.reshape(-1, 1, 1, 1)
    assert rectified_flow_loss(exact, point, noise[:2], t) < 1e-10


def test_the_interpolate_keeps_the_datas_dtype():
    """Under mixed precision the data may be bf16 while t is float32: the network gets bf16."""
    model = Recorder()
    x0 = torch.randn(3, 2).to(torch.bfloat16)
    rectified_flow_loss(model, x0, torch.randn(3, 2).to(torch.bfloat16), torch.tensor([0.1, 0.5, 0.9]))
    assert model.calls[0][0].dtype == torch.bfloat16


@pytest.mark.parametrize("t, message", [
    (torch.tensor([0.5, 1.5, 0.2]), "t must lie in [0, 1], got values from 0.2 to 1.5"),
    (torch.tensor([0.5, -0.1, 0.2]), "t must lie in [0, 1], got values from -0.1 to 0.5"),
    (torch.tensor([0.5, 0.2]), "t must have shape (3,), got (2,)"),
    (torch.full((3, 1), 0.5), "t must have shape (3,), got (3, 1)"),
])
def test_bad_times_are_one_clear_line(t, message):
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError) as error:
        rectified_flow_loss(Recorder(), x, x, t)
    assert str(error.value) == message


def test_a_velocity_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"the velocity model returned shape \(3, 1\) for x_t of shape \(3, 2\)"):
        rectified_flow_loss(lambda x, t: x[:, :1], torch.zeros(3, 2), torch.zeros(3, 2), torch.full((3,), 0.5))


def test_the_objective_draws_each_rows_noise_then_its_time_from_the_rows_seed_and_uses_given_pairs():
    model = Recorder()
    x0, seeds = torch.randn(4, 2), [(0, 3, i) for i in range(4)]
    loss = RectifiedFlowObjective(time_scale=1000.0).losses({"net": model}, x0, 3, seeds)["net"]
    rows = [generators([seed])[0] for seed in seeds]  # each row from its own seed alone
    noise = torch.stack([torch.randn(2, generator=g) for g in rows])
    t = torch.stack([torch.rand((), generator=g) for g in rows])
    assert torch.allclose(loss, rectified_flow_loss(Recorder(), x0, noise, t))
    assert torch.equal(model.calls[0][1], t * 1000.0)  # the network sees t * time_scale
    paired = torch.randn(4, 2)
    RectifiedFlowObjective(time_scale=1.0).losses({"net": model}, [x0, paired], 3, seeds)
    t = torch.stack([torch.rand((), generator=g) for g in generators(seeds)])  # no noise drawn: t first
    assert torch.equal(model.calls[-1][1], t)
    assert torch.allclose(model.calls[-1][0], (1 - t[:, None]) * x0 + t[:, None] * paired)


def test_logit_normal_times_default_to_the_standard_normal_logit():
    t = RectifiedFlowObjective("logit_normal").sample_t(generators(range(6)), "cpu")
    assert torch.equal(t, torch.sigmoid(torch.stack([torch.randn((), generator=g) for g in generators(range(6))])))


def test_logit_normal_times_concentrate_where_asked():
    n = 8000
    uniform = RectifiedFlowObjective().sample_t(generators(range(n)), "cpu")
    centred = RectifiedFlowObjective("logit_normal", loc=0.0, scale=1.0).sample_t(generators(range(n, 2 * n)), "cpu")
    late = RectifiedFlowObjective("logit_normal", loc=1.0, scale=0.5).sample_t(generators(range(2 * n, 3 * n)), "cpu")
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(uniform.std()) - (1 / 12) ** 0.5) < 0.01
    assert abs(float(centred.mean()) - 0.5) < 0.01 and float(centred.std()) < 0.25  # more mass in the middle
    assert abs(float(late.median()) - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01
    with pytest.raises(ValueError, match="unknown time_sampling 'beta': use uniform or logit_normal"):
        RectifiedFlowObjective("beta")
