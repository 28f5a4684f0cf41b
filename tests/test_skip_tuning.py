import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from fewstep import samplers
from helpers import ROOT, run_cli, tiny_unet


def tiny_conditional_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8,
                                attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()


def call(unet, x, t):
    if isinstance(unet, UNet2DConditionModel):
        return unet(x, t, encoder_hidden_states=torch.ones(len(x), 3, 8)).sample
    return unet(x, t).sample


@pytest.fixture(params=["UNet2DModel", "UNet2DConditionModel"])
def any_unet(request):
    return tiny_unet() if request.param == "UNet2DModel" else tiny_conditional_unet()


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.tensor([500, 500])


def test_rho_one_is_bit_identical_and_no_hook_remains(any_unet):
    with torch.no_grad():
        plain = call(any_unet, X, T)
        with samplers.skip_tuning(any_unet, rho_top=1.0, rho_bottom=1.0):
            same = call(any_unet, X, T)
        with samplers.skip_tuning(any_unet, rho_top=1.0, rho_bottom=0.5):
            tuned = call(any_unet, X, T)
        after = call(any_unet, X, T)
    assert torch.equal(plain, same) and torch.equal(plain, after)
    assert not torch.allclose(plain, tuned, atol=1e-4)
    assert all(not block._forward_pre_hooks for block in any_unet.up_blocks) and not any_unet._forward_pre_hooks


def skip_sizes(unet):
    """The size (sum of |h|) of every skip feature as the up blocks receive it, in call order."""
    seen = []
    hooks = [block.register_forward_pre_hook(lambda m, a, k: seen.extend(h.abs().sum().item() for h in a[1]),
                                             with_kwargs=True) for block in unet.up_blocks]
    with torch.no_grad():
        call(unet, X, T)
    for hook in hooks:
        hook.remove()
    return seen


def test_factors_are_linear_in_depth_and_reach_the_right_skips():
    unet = tiny_unet()  # 4 skips, outermost first: conv_in, down0 resnet, down0 downsample, down1 resnet
    plain = skip_sizes(unet)
    with samplers.skip_tuning(unet, rho_top=0.9, rho_bottom=0.3) as handle:
        tuned = skip_sizes(unet)  # hooks registered after the tuning's see its output
    assert handle.factors == pytest.approx([0.9, 0.7, 0.5, 0.3])
    # the innermost up block comes first and gets the two deepest skips, in encoder order
    assert [t / p for t, p in zip(tuned, plain)] == pytest.approx([0.5, 0.3, 0.9, 0.7], rel=1e-5)


def test_sigma_range_scales_only_inside_it():
    unet = tiny_unet()
    denoiser = samplers.DiffusersUNetDenoiser(unet, DDPMScheduler().alphas_cumprod)
    low_sigma, high_sigma = 0.5, 20.0
    with torch.no_grad():
        plain = [denoiser(X, s) for s in (low_sigma, high_sigma)]
        with samplers.skip_tuning(denoiser, rho_bottom=0.5, sigma_range=(1.0, 100.0)):
            tuned = [denoiser(X, s) for s in (low_sigma, high_sigma)]
            mixed = denoiser(X, torch.tensor([low_sigma, high_sigma]))
    assert torch.equal(tuned[0], plain[0]) and not torch.allclose(tuned[1], plain[1])
    assert torch.allclose(mixed[0], plain[0][0], atol=1e-6) and torch.allclose(mixed[1], tuned[1][1], atol=1e-6)


def test_skip_tuning_improves_nothing_silently_twice():
    unet = tiny_unet()
    handle = samplers.skip_tuning(unet, rho_bottom=0.8)
    with pytest.raises(ValueError, match="already applied to this UNet \\(rho_top=1.0, rho_bottom=0.8\\)"):
        samplers.skip_tuning(unet, rho_bottom=0.8)
    handle.remove()
    samplers.skip_tuning(unet, rho_bottom=0.7).remove()


@pytest.mark.parametrize("kwargs, message", [
    ({"rho_bottom": 0.0}, "rho_bottom must be a positive number, got 0.0"),
    ({"rho_top": -1}, "rho_top must be a positive number, got -1"),
    ({"rho_bottom": "0.8"}, "rho_bottom must be a positive number, got '0.8'"),
    ({"rho_bottom": float("nan")}, "rho_bottom must be a positive number, got nan"),
    ({"sigma_range": (10.0, 1.0)}, r"sigma_range must be \(low, high\) with 0 <= low < high, got \(10.0, 1.0\)"),
    ({"sigma_range": (1.0, 10.0)}, "sigma_range needs the model's noise table"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        samplers.skip_tuning(tiny_unet(), **kwargs)


def test_models_without_skips_are_refused(gmm):
    with pytest.raises(ValueError, match="GMMDenoiser has no UNet skip connections"):
        samplers.skip_tuning(gmm)
    with pytest.raises(ValueError, match="Sequential has no UNet skip connections"):
        samplers.skip_tuning(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# -- the entry points ---------------------------------------------------------------------------
@pytest.fixture
def tiny_pipeline(tmp_path):
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_skiptune_sampler_configs_change_the_samples(tmp_path, tiny_pipeline):
    import numpy as np

    common = ["model=diffusers", f"model.path={tiny_pipeline}", "num_samples=4", "steps=3"]
    plain = run_cli("sample.py", *common, "sampler=ddim", f"out_dir={tmp_path / 'plain'}")
    tuned = run_cli("sample.py", *common, "sampler=ddim+skiptune", "sampler.skip.rho_bottom=0.5", f"out_dir={tmp_path / 'tuned'}")
    assert plain.returncode == 0 and tuned.returncode == 0, tuned.stderr
    assert "Skip-Tuning: rho_top 1.0, rho_bottom 0.5" in tuned.stdout
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("plain", "tuned"))
    assert not np.allclose(a, b, atol=1e-4)
    bad = run_cli("sample.py", *common, "sampler=ddim+skiptune", "sampler.skip.rho_bottom=-1", f"out_dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: rho_bottom must be a positive number, got -1.0"


def test_the_calibrated_fixed_grid_samplers_have_a_skiptune_config_and_factors_beside_the_digits_model():
    """dpm_2 and amed_plugin have none until a calibration run makes their tables."""
    names = {p.name.removesuffix("+skiptune.yaml") for p in (ROOT / "conf" / "sampler").glob("*+skiptune.yaml")}
    assert names == {"ddim", "euler", "heun", "dpmpp_2m", "ipndm", "amed"} and names <= set(samplers.FIXED_GRID_NAMES)
    assert {p.stem for p in (ROOT / "assets" / "digits_ddpm" / "skiptune").glob("*.json")} == names


def test_calibration_scans_the_grid_and_writes_nothing_unasked(tmp_path, tiny_pipeline):
    """calibrate_skiptune.py end to end (in this process, helpers.run_cli)."""
    import json

    done = run_cli("calibrate_skiptune.py", "model=diffusers", f"model.path={tiny_pipeline}", "data.image_size=8",
               "extractor=raw", "num_samples=40", "batch_size=40", "rho_grid=[0.5,1.0]", "nfes=[2]", "write=false",
               f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "calibration-ddim.json").read_text())["2"]
    assert [r["rho_bottom"] for r in rows] == [0.5, 1.0]
    assert rows[0]["fd"] != rows[1]["fd"]
    best = min(rows, key=lambda r: r["fd"])
    said = done.stdout.splitlines()  # the best factors and the one file written, also in the run's log file
    assert said[-2:] == [f"best factors: rho_top 1.0, NFE 2: rho_bottom {best['rho_bottom']} (FD {best['fd']:.3f})",
                         f"wrote {tmp_path / 'calibration-ddim.json'}"]
    assert all(line in (tmp_path / "calibrate_skiptune.log").read_text() for line in said)
    assert [p.name.split("-")[-1] for p in (tmp_path / "cache").iterdir()] == ["raw.npz"]  # the reference, cached


def test_the_best_factors_share_one_rho_top_and_keep_the_plain_sampler_s_fd():
    from fewstep.tuning.calibration import best_factors

    def rows(*fds):  # (rho_top, rho_bottom) over [1.0, 0.9] x [1.0, 0.8]
        grid = [(1.0, 1.0), (1.0, 0.8), (0.9, 1.0), (0.9, 0.8)]
        return [{"rho_top": t, "rho_bottom": b, "fd": fd} for (t, b), fd in zip(grid, fds)]

    # NFE 5 and 20 are best at rho_top 0.9, NFE 10 at 1.0: 0.9 is kept and NFE 10 re-picked under it.
    results = {5: rows(50, 40, 45, 30), 10: rows(20, 10, 25, 15), 20: rows(8, 9, 7, 9)}
    rho_top, by_nfe = best_factors(results)
    assert rho_top == 0.9
    assert by_nfe == {5: {"rho_bottom": 0.8, "fd": 30, "fd_plain": 50}, 10: {"rho_bottom": 0.8, "fd": 15, "fd_plain": 20},
                      20: {"rho_bottom": 1.0, "fd": 7, "fd_plain": 8}}
    without_plain = {5: [r for r in rows(50, 40, 45, 30) if r["rho_top"] == 0.9]}
    assert best_factors(without_plain) == (0.9, {5: {"rho_bottom": 0.8, "fd": 30, "fd_plain": None}})


# -- what each part of the tuning does, one behaviour at a time ------------------------------------
class Skips(torch.nn.Module):
    """A stand-in UNet with `count` skips in one up block, which returns its skips as received."""

    def __init__(self, count, down=True, up=True):
        super().__init__()
        if down:
            self.down_blocks = torch.nn.ModuleList()
        if up:
            block = torch.nn.Module()
            block.resnets = torch.nn.ModuleList(torch.nn.Identity() for _ in range(count))
            block.forward = lambda hidden, skips: skips
            self.up_blocks = torch.nn.ModuleList([block])


@pytest.mark.parametrize("count, factors", [(1, [0.9]), (2, [0.9, 0.3]), (3, [0.9, 0.6, 0.3])])
def test_the_factors_run_from_rho_top_to_rho_bottom_for_any_number_of_skips(count, factors):
    skips = Skips(count)
    with samplers.skip_tuning(skips, rho_top=0.9, rho_bottom=0.3) as handle:
        assert handle.factors == pytest.approx(factors)
        scaled = skips.up_blocks[0](None, tuple(torch.ones(1) for _ in range(count)))
    assert [float(h) for h in scaled] == pytest.approx(factors)


@pytest.mark.parametrize("down, up", [(True, False), (False, True)])
def test_a_model_with_only_one_side_of_the_skips_is_refused(down, up):
    with pytest.raises(ValueError, match="^Skips has no UNet skip connections"):
        samplers.skip_tuning(Skips(2, down=down, up=up))


def test_the_defaults_are_rho_top_1_and_rho_bottom_0_8_and_remove_may_be_called_twice():
    unet = tiny_unet()
    handle = samplers.skip_tuning(unet)
    assert (handle.rho_top, handle.rho_bottom, handle.sigma_range) == (1.0, 0.8, None)
    handle.remove()
    handle.remove()
    with samplers.skip_tuning(unet, rho_bottom=0.5) as again:  # and the UNet takes a new tuning
        again.remove()
    assert all(not block._forward_pre_hooks for block in unet.up_blocks) and not unet._forward_pre_hooks


def test_factors_above_one_and_a_sigma_range_scale_by_exactly_the_factors():
    """rho 2.0 doubles its skip; inside the range every skip is scaled by its factor, not divided."""
    unet = tiny_unet()
    plain = skip_sizes(unet)
    denoiser = samplers.DiffusersUNetDenoiser(unet, DDPMScheduler().alphas_cumprod)
    with samplers.skip_tuning(denoiser, rho_top=2.0, rho_bottom=0.5, sigma_range=(0.0, 1e4)) as handle:
        tuned = skip_sizes(unet)
    assert handle.factors == pytest.approx([2.0, 1.5, 1.0, 0.5])
    assert [t / p for t, p in zip(tuned, plain)] == pytest.approx([1.0, 0.5, 2.0, 1.5], rel=1e-5)


def test_the_sigma_range_includes_its_ends_and_reads_the_timestep_by_keyword_too():
    """At the timesteps whose sigmas are the range's ends the skips are scaled; one step outside
    they are not. A pipeline's noise table serves as well as a denoiser's."""
    from diffusers import DDPMPipeline
    from fewstep.samplers.spaces import sigma_of_timestep, sigmas_from_alphas_cumprod

    unet, scheduler = tiny_unet(), DDPMScheduler()
    log_sigmas = sigmas_from_alphas_cumprod(scheduler.alphas_cumprod).log()
    ends = [float(sigma_of_timestep(torch.tensor([t], dtype=torch.float64), log_sigmas)) for t in (100, 900)]
    x = X[:1]

    def outputs(keyword=False):
        with torch.no_grad():
            return {t: (unet(x, timestep=torch.tensor(t)) if keyword else unet(x, torch.tensor(t))).sample
                    for t in (99, 100, 900, 901)}

    plain = outputs()
    with samplers.skip_tuning(DDPMPipeline(unet=unet, scheduler=scheduler), rho_bottom=0.5, sigma_range=ends):
        tuned, by_keyword = outputs(), outputs(keyword=True)
    assert [torch.equal(tuned[t], plain[t]) for t in tuned] == [True, False, False, True]
    assert all(torch.equal(tuned[t], by_keyword[t]) for t in tuned)


def test_a_half_precision_unet_stays_in_its_dtype_with_a_sigma_range():
    unet = tiny_unet().to(torch.bfloat16)
    denoiser = samplers.DiffusersUNetDenoiser(unet, DDPMScheduler().alphas_cumprod)
    with torch.no_grad(), samplers.skip_tuning(denoiser, rho_bottom=0.5, sigma_range=(1.0, 100.0)):
        out = unet(X.to(torch.bfloat16), torch.tensor([500, 500])).sample
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("sigma_range, ok", [((0.0, 10.0), True), ((0.5, 10.0), True), ((5.0, 5.0), False)])
def test_a_sigma_range_may_start_at_zero_and_must_not_be_empty(sigma_range, ok):
    denoiser = samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod)
    if ok:
        samplers.skip_tuning(denoiser, sigma_range=sigma_range).remove()
    else:
        with pytest.raises(ValueError, match=r"^sigma_range must be \(low, high\) with 0 <= low < high, got \(5.0, 5.0\)$"):
            samplers.skip_tuning(denoiser, sigma_range=sigma_range)


def test_the_refusals_are_whole_sentences():
    with pytest.raises(ValueError, match="^sigma_range needs the model's noise table: pass the denoiser or the "
                                         "pipeline, not the bare UNet$"):
        samplers.skip_tuning(tiny_unet(), sigma_range=(1.0, 10.0))
