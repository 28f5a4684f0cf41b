"""The GAN losses against closed forms (linear and quadratic critics), the double backprop of the
penalty, the regression form of the generator step, the input refusals and the networks' shapes."""
import pytest
import torch
from torch import nn

from fewstep.gan import (DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, critic_values, generator_plain_loss,
                         generator_regression_loss, reflow_critic_loss, regression_loss, regression_target,
                         wgan_generator_loss, wgan_gp_critic_loss)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (4, 1, 2, 3)  # image-like, so the norms must run over every non-batch dimension


class Linear(nn.Module):
    """`phi(x) = <a, x> + b` over the flattened sample: its gradient is `a` everywhere."""

    def __init__(self, a, b=0.3):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(torch.tensor(b, dtype=a.dtype))

    def forward(self, x):
        return x.flatten(1) @ self.a + self.b


class Quadratic(nn.Module):
    """`phi(x) = c/2 ||x||^2`: its gradient is `c x`."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.c * x.flatten(1).pow(2).sum(1)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64) + 1


def times(seed, x):
    """The times the losses draw from `torch.Generator().manual_seed(seed)`."""
    return torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def sq_norms(x):
    return x.flatten(1).pow(2).sum(1)


def test_linear_critic_closed_forms():
    real, fake = batch()
    a = torch.linspace(-1, 2, 6, dtype=torch.float64)
    phi = Linear(a)
    gap = phi(fake).mean() - phi(real).mean()
    assert torch.allclose(reflow_critic_loss(phi, real, fake), gap + 0.5 * a.pow(2).sum())
    assert torch.allclose(reflow_critic_loss(phi, real, fake, penalty_weight=2.0), gap + 2.0 * a.pow(2).sum())
    assert torch.allclose(wgan_gp_critic_loss(phi, real, fake), gap + 10.0 * (a.norm() - 1) ** 2)
    for loss in (reflow_critic_loss, wgan_gp_critic_loss):  # no penalty: the critic's gap alone
        assert torch.allclose(loss(phi, real, fake, penalty_weight=0.0), gap)
    assert torch.allclose(wgan_generator_loss(phi, fake), -phi(fake).mean())
    assert torch.allclose(generator_plain_loss(phi, fake, h=torch.exp), -phi(fake).exp().mean())


def test_the_interpolation_times_are_drawn_where_the_batch_is():
    critic, real = MLPCritic(width=8, depth=2).to("meta"), torch.empty(4, 2, device="meta")
    for loss in (reflow_critic_loss, wgan_gp_critic_loss):
        assert loss(critic, real, real).device.type == "meta"


def test_one_generator_per_sample_draws_each_samples_time_from_its_own():
    """With a list of generators, sample i's time is the first `torch.rand` of generator i alone (in
    float32, then the batch's dtype): x_t, and so the penalty of a quadratic critic, follows."""
    real, fake = batch()
    c, w = 0.7, 0.3
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(fake))]
    loss = reflow_critic_loss(Quadratic(c), real, fake, penalty_weight=w, generator=gens)
    t = torch.stack([torch.rand(1, 1, 1, generator=torch.Generator().manual_seed(10 + i)) for i in range(len(fake))])
    x_t = (1 - t.double()) * fake + t.double() * real
    gap = 0.5 * c * (sq_norms(fake).mean() - sq_norms(real).mean())
    assert torch.allclose(loss, gap + w * c ** 2 * sq_norms(x_t).mean())
    for critic_loss in (reflow_critic_loss, wgan_gp_critic_loss):
        with pytest.raises(ValueError) as error:
            critic_loss(Quadratic(c), real, fake, generator=gens[:3])
        assert str(error.value) == "3 generators for a batch of 4: give one per sample"


def test_quadratic_critic_penalties_at_recomputed_times():
    real, fake = batch()
    c, w = 0.7, 0.3
    phi = Quadratic(c)
    gap = 0.5 * c * (sq_norms(fake).mean() - sq_norms(real).mean())
    t = times(5, fake)
    x_t = (1 - t) * fake + t * real
    loss = reflow_critic_loss(phi, real, fake, penalty_weight=w, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(loss, gap + w * c ** 2 * sq_norms(x_t).mean())
    x_hat = real + t * (fake - real)
    loss = wgan_gp_critic_loss(phi, real, fake, penalty_weight=w, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(loss, gap + w * ((c * sq_norms(x_hat).sqrt() - 1) ** 2).mean())


def test_penalty_gradient_reaches_the_critic_and_not_the_generator():
    real, fake = batch()
    fake.requires_grad_(True)
    c, w = 0.7, 0.3
    phi = Quadratic(c)
    reflow_critic_loss(phi, real, fake, penalty_weight=w, generator=torch.Generator().manual_seed(5)).backward()
    t = times(5, fake)
    x_t = (1 - t) * fake.detach() + t * real
    expected = 0.5 * (sq_norms(fake.detach()).mean() - sq_norms(real).mean()) + 2 * w * c * sq_norms(x_t).mean()
    assert torch.allclose(phi.c.grad, expected)
    assert fake.grad is None


def test_the_gradient_penalty_reaches_the_critics_parameters():
    """WGAN-GP's penalty is differentiated through the critic's gradient (a graph of the graph):
    with `phi = c/2 |x|^2`, `d/dc [lambda (c |x_hat| - 1)^2] = 2 lambda (c |x_hat| - 1) |x_hat|`."""
    real, fake = batch()
    c, w = 0.7, 0.3
    phi = Quadratic(c)
    wgan_gp_critic_loss(phi, real, fake, penalty_weight=w, generator=torch.Generator().manual_seed(5)).backward()
    norm = sq_norms(real + times(5, fake) * (fake - real)).sqrt()
    expected = 0.5 * (sq_norms(fake).mean() - sq_norms(real).mean()) + (2 * w * (c * norm - 1) * norm).mean()
    assert torch.allclose(phi.c.grad, expected)


def test_one_sgd_step_lowers_the_reflow_critic_loss():
    torch.manual_seed(0)
    critic = MLPCritic(dim=2, width=16, depth=2)
    real, fake = torch.randn(64, 2) + 2, torch.randn(64, 2)

    def loss():
        return reflow_critic_loss(critic, real, fake, generator=torch.Generator().manual_seed(1))

    before = loss()
    before.backward()
    with torch.no_grad():
        for p in critic.parameters():
            p -= 0.05 * p.grad
    assert loss() < before - 1e-3


def generator_grads(loss_fn, generator, critic, z):
    return torch.autograd.grad(loss_fn(critic, generator(z)), list(generator.parameters()))


def test_regression_step_is_the_plain_step_times_two_eta():
    torch.manual_seed(0)
    generator, critic = MLPGenerator(width=16, depth=2).double(), MLPCritic(width=16, depth=2).double()
    z = torch.randn(32, 2, dtype=torch.float64)
    eta = 0.1
    plain = generator_grads(generator_plain_loss, generator, critic, z)
    regression = generator_grads(lambda d, x: generator_regression_loss(d, x, eta), generator, critic, z)
    assert all(torch.allclose(r, 2 * eta * p, rtol=1e-9, atol=1e-12) for r, p in zip(regression, plain))
    other = generator_grads(lambda d, x: generator_regression_loss(d, x, 2 * eta), generator, critic, z)
    assert not all(torch.allclose(r, 2 * eta * p, rtol=1e-3) for r, p in zip(other, plain))
    assert all(p.grad is None for p in critic.parameters())


def test_regression_target_and_loss():
    _, fake = batch()
    fake.requires_grad_(True)
    target = regression_target(Quadratic(0.7), fake, 0.2)
    assert not target.requires_grad
    assert torch.allclose(target, fake.detach() * (1 + 0.2 * 0.7))
    d = fake.detach() - target
    assert torch.allclose(regression_loss(fake, target), sq_norms(d).mean())  # summed per sample, batch mean


def one_line(err, *parts):
    message = str(err.value)
    return "\n" not in message and all(p in message for p in parts)


def test_refusals_are_one_line_and_name_the_value():
    real, fake = torch.randn(4, 2), torch.randn(4, 3)
    with pytest.raises(ValueError) as err:
        critic_values(nn.Linear(2, 2), real)
    assert one_line(err, "[4, 2]", "batch of 4")
    with pytest.raises(ValueError) as err:
        reflow_critic_loss(lambda x: x, real, torch.randn(4, 2))  # the losses check the critic too
    assert one_line(err, "[4, 2]")
    for loss in (reflow_critic_loss, wgan_gp_critic_loss):
        with pytest.raises(ValueError) as err:
            loss(MLPCritic(), real, fake)
        assert one_line(err, "(4, 2)", "(4, 3)")
        with pytest.raises(ValueError) as err:
            loss(MLPCritic(), real, real, penalty_weight=-0.25)
        assert one_line(err, "-0.25")
    for step in (0.0, -0.125):
        with pytest.raises(ValueError) as err:
            generator_regression_loss(MLPCritic(), real, step_size=step)
        assert one_line(err, str(step))
    with pytest.raises(ValueError) as err:
        regression_loss(real, fake)
    assert one_line(err, "(4, 2)", "(4, 3)")


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])
def test_dcgan_shapes_and_range(channels, size):
    torch.manual_seed(0)
    generator = DCGANGenerator(latent_dim=8, channels=channels, image_size=size, width=8)
    critic = DCGANCritic(channels=channels, image_size=size, width=8)
    assert generator.latent_shape == (8,) and generator.sample_shape == (channels, size, size)
    with torch.no_grad():
        for p in generator.parameters():
            p.mul_(10)  # pushes the pre-activation far past +-1: only a tanh keeps the output in range
        x = generator(torch.randn(5, 8))
    assert x.shape == (5, channels, size, size)
    assert x.abs().max() <= 1 and x.abs().max() > 0.99
    values = critic(x)
    assert values.shape == (5,)
    assert torch.allclose(critic(x[:2]), values[:2], atol=1e-6)  # no batch statistics in the critic


def test_mlp_shapes():
    generator, critic = MLPGenerator(latent_dim=3, dim=2, width=8, depth=2), MLPCritic(dim=2, width=8, depth=2)
    assert generator.latent_shape == (3,) and generator.sample_shape == (2,)
    x = generator(torch.randn(6, 3))
    assert x.shape == (6, 2) and critic(x).shape == (6,)


@pytest.mark.parametrize("size", [12, 24, 2])
def test_bad_image_size_refused(size):
    for net in (DCGANGenerator, DCGANCritic):
        with pytest.raises(ValueError) as err:
            net(image_size=size)
        assert one_line(err, str(size))
