"""samplers/guidance.py: classifier-free guidance as a denoiser, on a tiny class-conditional UNet."""
import pytest
import torch

from fewstep.samplers import DiffusersUNetDenoiser, SAMPLER_NAMES, get_sigmas, sample, sample_seeds
from fewstep.samplers.guidance import GuidedDenoiser, class_guided, class_labels, labels_of_run, num_classes
from helpers import TABLE, range_gap, tiny_unet


def conditional_denoiser():
    from diffusers import DDPMScheduler

    unet = tiny_unet(num_class_embeds=4)  # 3 classes and the null class 3
    with torch.no_grad():
        unet.class_embedding.weight.mul_(20)  # classes far apart, so a wrong label shows
    return DiffusersUNetDenoiser(unet, DDPMScheduler(**TABLE).alphas_cumprod)


@pytest.fixture(scope="module")
def model():
    return conditional_denoiser()


def test_guided_output_is_the_formula_of_two_plain_calls(model):
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.tensor(2.0), torch.tensor([0, 2, 1])
    guided = class_guided(model, 3.5)
    with torch.no_grad():
        plain_c = model(x, sigma, class_labels=labels)
        plain_u = model(x, sigma, class_labels=torch.full((3,), 3))
        got = guided(x, sigma, class_labels=labels)
    torch.testing.assert_close(got, plain_u + 3.5 * (plain_c - plain_u), rtol=1e-5, atol=1e-5)
    assert (plain_c - plain_u).abs().max() > 1e-2  # the classes matter, so the test could fail


def test_scale_one_is_the_conditional_model_alone_in_one_call(model):
    calls = []
    handle = model.unet.register_forward_hook(lambda m, a, out: calls.append(len(a[0])))
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([1, 1])
    with torch.no_grad():
        one = class_guided(model, 1.0)(x, 1.0, class_labels=labels)
        two = class_guided(model, 2.0)(x, 1.0, class_labels=labels)
    handle.remove()
    torch.testing.assert_close(one, model(x, 1.0, class_labels=labels).detach())
    assert calls == [2, 4]  # w = 1: the batch; w = 2: both halves in one call
    assert not torch.allclose(one, two)


def test_per_sample_sigmas_are_doubled_with_the_batch(model):
    x, labels, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0.5, 9.0])
    guided = class_guided(model, 2.0)
    with torch.no_grad():
        together = guided(x, sigma, class_labels=labels)
        apart = torch.cat([guided(x[i:i + 1], sigma[i], class_labels=labels[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n not in ("amed", "amed_plugin")])
def test_every_sampler_runs_guided_and_counts_one_nfe_per_guided_call(model, name):
    sigmas = get_sigmas("karras", 3, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    calls = []
    out = sample(name, class_guided(model, 2.0), torch.randn(2, 1, 8, 8), sigmas, cond={"class_labels": torch.tensor([0, 2])},
                 callback=lambda info: calls.append(info["nfe"]), **({"rtol": 1e-2, "atol": 1e-2} if name == "dopri5" else {}))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert calls == list(range(1, len(calls) + 1))


def test_sample_seeds_give_the_same_rows_in_any_batch_size(model):
    sigmas = get_sigmas("karras", 4, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    labels = labels_of_run(range(5), 3)
    runs = [torch.cat(list(sample_seeds("euler", class_guided(model, 2.0), range(10, 15), sigmas, (1, 8, 8),
                                        batch_size=b, cond={"class_labels": labels}))) for b in (5, 2)]
    assert range_gap(runs[0], runs[1]) < 1e-5  # float32 rounding of the UNet at another batch size only


def test_labels_of_a_run_are_balanced_and_follow_the_chosen_classes():
    assert labels_of_run(range(7), 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert labels_of_run(range(2, 5), 10, chosen=[7, 1]).tolist() == [7, 1, 7]


def test_classes_of_a_conditional_and_an_unconditional_model(model):
    assert num_classes(model) == 3
    plain = DiffusersUNetDenoiser(tiny_unet(), model.alphas_cumprod)
    assert num_classes(plain) is None
    with pytest.raises(ValueError, match=r"guidance_scale=2.0 needs a conditional model"):
        class_guided(plain, 2.0)


@pytest.mark.parametrize("labels, message", [([0, 3], r"class 3 is not one of the model's 3 classes 0\.\.2"),
                                             ([-1], r"class -1 is not one")])
def test_a_label_outside_the_classes_is_refused(model, labels, message):
    with pytest.raises(ValueError, match=message):
        class_labels(model, labels)


def test_bad_guidance_input_is_refused_in_one_line(model):
    with pytest.raises(ValueError, match=r"guidance_scale must be a number >= 0, got -1\.0"):
        GuidedDenoiser(model, -1, {"class_labels": torch.tensor([3])})
    with pytest.raises(ValueError, match=r"needs the conditioning keywords of the call"):
        class_guided(model, 2.0)(torch.randn(1, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"the conditioning class_labels has 1 rows; the batch has 2"):
        sample("euler", class_guided(model, 2.0), torch.randn(2, 1, 8, 8), [1.0, 0.0],
               cond={"class_labels": torch.tensor([1])})
    with pytest.raises(ValueError, match=r"the unconditional class_labels has 2 rows; the batch has 3"):
        GuidedDenoiser(model, 2.0, {"class_labels": torch.tensor([3, 3])})(torch.randn(3, 1, 8, 8), 1.0,
                                                                            class_labels=torch.tensor([0, 1, 2]))
