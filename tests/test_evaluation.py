import json

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from sklearn.datasets import load_digits

from helpers import ROOT, accelerate_launch, finish, ok, run_cli, start, stop
from fewstep.evaluation import FeatureStats, frechet_distance, get_extractor, load_stats, save_stats
from fewstep.evaluation.features import InceptionFeatures, check_images
from fewstep.evaluation.fid import gmm_stats
from fewstep.training.data import digits


def random_stats(d, n, seed):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + rng.standard_normal(d)
    return f.mean(0), np.cov(f, rowvar=False)


def test_agrees_with_pytorch_fid():
    a, b = random_stats(256, 2000, 0), random_stats(256, 2000, 1)
    ours, theirs = frechet_distance(*a, *b), calculate_frechet_distance(*a, *b)
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)


def test_closed_form_for_diagonal_gaussians():
    va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    mu = np.array([1.0, -2.0, 0.5])
    expected = (mu ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance(mu, np.diag(va), np.zeros(3), np.diag(vb)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu, np.diag(va), mu, np.diag(va)) == pytest.approx(0, abs=1e-12)


def test_near_singular_covariances_stay_finite_and_real():
    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.1   # rank 9 in 64-d
    d = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert np.isfinite(d) and isinstance(d, float) and d > 0


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_exactly_singular_covariances_match_the_matrix_square_root():
    """A feature that never varies (a dead unit) makes `sigma1` exactly singular, so Cholesky fails and the
    symmetric-root branch runs; it must agree with the textbook route `tr sqrtm(S1 S2)` (scipy)."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    f1[:, 2] = 0.5                                                       # constant: a zero row and column
    f1[:, 4] = f1[:, 0] - f1[:, 1]                                       # and a linear dependence
    f2 = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 1.0
    (mu1, s1), (mu2, s2) = ((f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)   # S2 singular instead


def test_different_dimensions_are_refused():
    with pytest.raises(ValueError, match=r"different dimensions: mu1 \(3,\), sigma1 \(3, 3\), mu2 \(4,\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_equal_the_batch_ones():
    f = torch.randn(1000, 5, generator=torch.Generator().manual_seed(0)) * 3 + 2
    stats = FeatureStats(5)
    for chunk in f.split(37):
        stats.update(chunk)
    mu, sigma = stats.mu_sigma()
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)


def test_fewer_than_two_samples_are_refused():
    stats = FeatureStats(3)
    stats.update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least two samples, got 1"):
        stats.mu_sigma()


def test_stats_files_round_trip_and_missing_keys_are_named(tmp_path):
    mu, sigma = random_stats(8, 50, 0)
    path = save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(path) as f:  # as pytorch-fid reads them
        np.testing.assert_array_equal(f["mu"][:], mu)
    np.testing.assert_array_equal(load_stats(path)[1], sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="bad.npz has no mu or sigma \\(keys: mean\\)"):
        load_stats(tmp_path / "bad.npz")


def test_gmm_moments_are_exact(gmm):
    x = gmm.sample(400_000, generator=torch.Generator().manual_seed(0)).numpy()
    mu, sigma = gmm_stats(gmm)
    np.testing.assert_allclose(mu, x.mean(0), atol=0.01)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), atol=0.02)


def test_the_shipped_digits_classifier_is_accurate_and_separates_noise():
    extractor = get_extractor("digits")
    net = extractor.net
    images, labels = digits(), torch.as_tensor(load_digits().target)
    held_out = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:360]
    with torch.no_grad():
        accuracy = (net(images[held_out]).argmax(1) == labels[held_out]).float().mean()
        real_a, real_b = extractor(images[::2]), extractor(images[1::2])
        noise = extractor(torch.rand(900, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert accuracy >= 0.97

    def fd(a, b):
        sa, sb = FeatureStats(64), FeatureStats(64)
        sa.update(a), sb.update(b)
        return frechet_distance(*sa.mu_sigma(), *sb.mu_sigma())

    assert fd(real_a, real_b) * 20 < fd(real_a, noise)


@pytest.mark.parametrize("x, message", [
    (torch.zeros(2, 3, 16, 16), r"C in \(1,\), got \(2, 3, 16, 16\)"),
    (torch.zeros(2, 1, 8, 8), r"expected 16x16 images, got \(8, 8\)"),
    (torch.full((2, 1, 16, 16), 255.0), r"expected images in \[-1, 1\], got values in \[255, 255\]"),
])
def test_images_the_extractor_cannot_take_are_refused(x, message):
    with pytest.raises(ValueError, match=message):
        get_extractor("digits")(x)


@pytest.mark.usefixtures("one_thread")  # Inception-v3 on 299x299: two threads spin when the cores are busy
def test_inception_weights_load_from_a_local_file_and_a_missing_one_is_named(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf

    # Build the network with random weights (no download) and save them as a weights file.
    monkeypatch.setattr(tf, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, **k: None)
    torch.manual_seed(0)
    random_net = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    torch.save(random_net.state_dict(), weights)

    extractor = InceptionFeatures(weights)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = extractor(x)
    assert features.shape == (2, 2048)
    images = ((x + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
    assert torch.equal(features, random_net.eval()(images)[0])
    with pytest.raises(FileNotFoundError, match="FID Inception weights not found: .*nowhere.pth"):
        InceptionFeatures(tmp_path / "nowhere.pth")


def test_check_images_accepts_the_declared_range():
    check_images(torch.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16), (1,), 16)


def test_eval_gives_the_same_number_with_one_and_two_processes(tmp_path):
    """Two processes under `accelerate launch` (eval_fid.py end to end) and, meanwhile, one: this one
    (helpers.run_cli)."""
    args = ["model=gmm", "extractor=raw", "reference=analytic", "sampler=ddim", "sampler.options.eta=1.0",
            "steps=6", "num_samples=301", "batch_size=50"]
    script = str(ROOT / "scripts" / "eval_fid.py")
    two = start([*accelerate_launch(2), script, *args, f"out_dir={tmp_path / 'two'}"], tmp_path / "two")
    try:
        ok(run_cli("eval_fid.py", *args, f"out_dir={tmp_path / 'one'}"))
        finish(two)  # on a failure, what failed, e.g. gloo's rendezvous
    finally:
        stop(two)
    one, two = (json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in ("one", "two"))
    assert two["num_processes"] == 2 and one["num_samples"] == two["num_samples"] == 301
    assert one["fd"] == pytest.approx(two["fd"], rel=1e-9)


# -- any generator as a sample_fn: seeds split over processes, statistics, the reference -----------
def seeded_points(seeds):
    """A sample_fn: sample i is a 3-d Gaussian point drawn from seeds[i] alone."""
    return torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) * 2 + 1 for s in seeds])


class FakeAccelerator:
    def __init__(self, index, processes):
        self.process_index, self.num_processes = index, processes


def test_seeds_split_over_processes_and_gather_back_in_their_order(monkeypatch):
    import accelerate.utils

    from fewstep.evaluation.seeds import gather_by_seed, generate, split

    seeds = [7, 3, 11, 5, 2, 9, 4]
    shares = [split(seeds, FakeAccelerator(i, 3)) for i in range(3)]
    assert shares == [[7, 5, 4], [3, 2], [11, 9]] and split(seeds) == seeds
    batches = [list(generate(seeded_points, share, batch_size=2)) for share in shares]
    assert [len(b) for b in batches[0]] == [2, 1]
    # Every process sends its samples; gather_object hands each process all of them, in process order.
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: [[x for b in part for x in b] for part in batches])
    gathered = gather_by_seed(seeds, batches[1], FakeAccelerator(1, 3))
    assert torch.equal(gathered, seeded_points(seeds))
    assert torch.equal(gather_by_seed(seeds, generate(seeded_points, seeds, 3)), seeded_points(seeds))


def test_a_sample_fn_must_give_one_sample_per_seed():
    from fewstep.evaluation.seeds import generate

    with pytest.raises(ValueError, match="the sample_fn gave 1 samples for 2 seeds"):
        list(generate(lambda seeds: torch.zeros(1, 3), [0, 1], batch_size=4))
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        list(generate(seeded_points, [0, 1], batch_size=0))


def test_frechet_of_a_sample_fn_is_the_distance_of_its_samples_whatever_the_batch_size():
    from fewstep.evaluation import frechet_of, statistics_of

    seeds = list(range(100, 150))
    x = seeded_points(seeds).double().numpy()
    reference = (np.zeros(3), np.eye(3))
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), *reference)
    raw = get_extractor("raw")
    for batch_size in (7, 50):
        assert frechet_of(seeded_points, seeds, raw, reference, batch_size=batch_size) == pytest.approx(expected, rel=1e-12)
    assert int(statistics_of(seeded_points, seeds, raw).n) == 50
    with pytest.raises(ValueError, match=r"num_samples=3 is too few for 2 processes \(need 2 each\)"):
        statistics_of(seeded_points, [0, 1, 2], raw, FakeAccelerator(0, 2))
    with pytest.raises(ValueError, match=r"^num_samples=1 is too few for one process \(need 2 each\)$"):
        statistics_of(seeded_points, [0], raw)


def test_a_denoiser_and_a_sampler_as_a_sample_fn_count_their_nfe(gmm):
    from fewstep import samplers
    from fewstep.evaluation.generators import SamplerFn

    sigmas = samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max)
    fn = SamplerFn("heun", gmm, sigmas, gmm.sample_shape)
    x = torch.cat([fn([3, 4, 5]), fn([6])])
    expected = torch.cat(list(samplers.sample_seeds("heun", gmm, [3, 4, 5, 6], sigmas, gmm.sample_shape)))
    assert torch.equal(x, expected) and fn.nfe == 7 and fn.batches == 2
    eta = SamplerFn("ddim", gmm, sigmas, gmm.sample_shape, options={"eta": 1.0})
    assert torch.equal(torch.cat([eta([3]), eta([4, 5])]), eta([3, 4, 5]))  # sampler noise from each seed too


def test_the_reference_cache_key_follows_the_data_config_and_the_weights_file(tmp_path):
    import os

    from omegaconf import OmegaConf

    from fewstep.cli.setup import cache_path

    data = OmegaConf.create({"_target_": "fewstep.training.data.digits", "image_size": 16})
    path = cache_path(data, "digits", None, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("digits-") and path.name.endswith("-digits.npz")
    assert cache_path(OmegaConf.create({**data, "image_size": 8}), "digits", None, tmp_path) != path
    assert cache_path(data, "raw", None, tmp_path) != path
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"1")
    with_weights = cache_path(data, "digits", weights, tmp_path)
    assert with_weights != path and cache_path(data, "digits", weights, tmp_path) == with_weights
    os.utime(weights, ns=(0, 0))  # the same path, another file
    assert cache_path(data, "digits", weights, tmp_path) != with_weights


def test_reference_statistics_of_each_kind(tmp_path, gmm):
    from omegaconf import OmegaConf

    from fewstep.cli.setup import reference as reference_stats

    def cfg(**kw):
        return OmegaConf.create({"reference": "data", "extractor": "raw", "extractor_weights": None,
                                 "cache_dir": str(tmp_path / "cache"), "data": None, **kw})

    mu, sigma = reference_stats(cfg(reference="analytic"), gmm, get_extractor("raw"), (2,))
    np.testing.assert_array_equal(mu, gmm_stats(gmm)[0])
    with pytest.raises(ValueError, match="reference=analytic needs model=gmm and extractor=raw"):
        reference_stats(cfg(reference="analytic", extractor="digits"), gmm, get_extractor("raw"), (2,))
    with pytest.raises(ValueError, match=r"reference=data needs a data set \(data=...\)"):
        reference_stats(cfg(), gmm, get_extractor("raw"), (2,))
    saved = save_stats(tmp_path / "ref.npz", np.ones(2), np.eye(2))
    np.testing.assert_array_equal(reference_stats(cfg(reference=str(saved)), gmm, get_extractor("raw"), (2,))[0], np.ones(2))
    data = {"_target_": "fewstep.training.data.digits", "image_size": 8}
    mu, sigma = reference_stats(cfg(data=data), None, get_extractor("raw"), (1, 8, 8))
    assert mu.shape == (64,) and sigma.shape == (64, 64)
    (cached,) = (tmp_path / "cache").iterdir()
    stamp = cached.stat().st_mtime_ns
    np.testing.assert_array_equal(reference_stats(cfg(data=data), None, get_extractor("raw"), (1, 8, 8))[1], sigma)
    assert cached.stat().st_mtime_ns == stamp and not list(tmp_path.glob("cache/.*"))  # read, not rewritten
    with pytest.raises(ValueError) as refused:  # before any sampling: eval_fid.py checks it first
        reference_stats(cfg(data=data), None, get_extractor("raw"), (1, 16, 16))
    assert str(refused.value) == "reference=data holds statistics of 64 features; extractor=raw gives 256 for samples " \
                                 "of shape (1, 16, 16)"


def test_the_samples_of_a_statistic_show_a_bar_on_the_first_process_unless_told_not_to(capsys):
    from fewstep.evaluation import statistics_of

    raw, seeds = get_extractor("raw"), list(range(10))
    statistics_of(seeded_points, seeds, raw, batch_size=5)
    assert "samples: " in capsys.readouterr().err
    statistics_of(seeded_points, seeds, raw, batch_size=5, progress=False)
    other = FakeAccelerator(1, 2)
    other.is_main_process, other.reduce = False, lambda tensor, reduction="sum": tensor
    statistics_of(seeded_points, seeds, raw, other, batch_size=5)
    assert capsys.readouterr().err == ""


# -- KID and numbers that carry their noise --------------------------------------------------------
def direct_kid(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair (O(n^2) Python loops)."""
    k = lambda a, b: (float(a @ b) / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    within = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1)) \
        + sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return within - 2 * sum(k(a, b) for a in x for b in y) / (m * n)


def test_kid_agrees_with_the_direct_computation_and_refuses_mismatched_sets():
    from fewstep.evaluation.kid import kid

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(25, 4, generator=g, dtype=torch.float64), torch.randn(25, 4, generator=g, dtype=torch.float64)
    mean, std = kid(x, y + 0.5, subsets=3)  # every subset is the whole set, reordered: no spread
    assert mean == pytest.approx(direct_kid(x, y + 0.5), rel=1e-10) and std == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match=r"two \(n, d\) feature sets of one d, got \(25, 4\) and \(25, 3\)"):
        kid(x, y[:, :3])
    with pytest.raises(ValueError, match="subsets of at least 2 features .* got 1 features"):
        kid(x, y[:1])


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_a_shift():
    """The mean over 300 pairs of samples of one Gaussian is 0 within 3 standard errors, where the biased
    (V-statistic) estimate of the same pairs is far above 0; a mean shift gives a clearly positive KID."""
    from fewstep.evaluation.kid import kid

    g = torch.Generator().manual_seed(1)
    values, biased = [], []
    for _ in range(300):
        x, y = (torch.randn(15, 4, generator=g, dtype=torch.float64) for _ in range(2))
        values.append(kid(x, y, subsets=1)[0])
        k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
        biased.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))
    error = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 3 * error and np.mean(biased) > 10 * error
    x, y = (torch.randn(200, 4, generator=g, dtype=torch.float64) for _ in range(2))
    assert kid(x, y + 0.5, subsets=10, subset_size=100)[0] > 20 * abs(kid(x, y, subsets=10, subset_size=100)[0])


def test_the_kid_of_the_digits_against_their_own_other_half_is_near_zero():
    from fewstep.evaluation.fid import data_features
    from fewstep.evaluation.kid import kid

    features = data_features(digits(), get_extractor("digits"))
    assert features.shape == (1797, 64) and features.dtype == torch.float64
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    half, other = features[order[:898]], features[order[898:]]
    same = kid(half, other, subsets=10, subset_size=500)[0]
    shifted = kid(half, other + other.std(0) * 0.5, subsets=10, subset_size=500)[0]
    assert abs(same) < 0.02 * shifted and shifted > 0


def test_the_features_of_a_sample_fn_come_in_seed_order_whatever_the_batch_size():
    from fewstep.evaluation.fid import features_of

    seeds = [5, 9, 2, 7, 11]
    for batch_size in (2, 5):
        features = features_of(seeded_points, seeds, get_extractor("raw"), batch_size=batch_size)
        assert features.dtype == torch.float64 and torch.equal(features, seeded_points(seeds).double())


def test_scores_on_seed_ranges_carry_their_spread_and_paired_ratios():
    from fewstep.evaluation import ranges

    reference = ranges.Reference.of(seeded_points(range(1000, 1400)).double())
    assert np.allclose(reference.mu, reference.features.mean(0).numpy())
    seed_ranges = ranges.seed_ranges([0, 100, 200], 60)
    assert seed_ranges == [range(0, 60), range(100, 160), range(200, 260)]
    raw = get_extractor("raw")
    good = ranges.score_ranges(lambda s: seeded_points(s) + 1, seed_ranges, raw, reference, batch_size=30,
                               kid_subsets=5)
    shifted = ranges.score_ranges(lambda s: seeded_points(s) + 3, seed_ranges, raw, reference, kid_subsets=5)
    assert [sorted(s) for s in good] == [["fd", "kid"]] * 3
    out = ranges.carried(shifted, good)
    assert out["fd"]["values"] == [s["fd"] for s in shifted] and out["fd"]["mean"] == pytest.approx(
        np.mean(out["fd"]["values"]))
    assert out["fd"]["min"] <= out["fd"]["mean"] <= out["fd"]["max"]
    assert out["ratio"]["fd"]["values"] == pytest.approx([s["fd"] / g["fd"] for s, g in zip(shifted, good)])
    assert out["ratio"]["fd"]["mean"] > 3 and out["ratio"]["kid"]["mean"] > 3 and "ratio" not in ranges.carried(good)
    assert ranges.tie(ranges.summary([1.0, 1.2, 0.8]), 1.1) and not ranges.tie(ranges.summary([1.0, 1.2, 0.8]), 1.5)
    assert ranges.paired_ratios([{"kid": 1.0}], [{"kid": -0.1}])["kid"]["values"] != [1.0]  # NaN: no ratio to <= 0
    with pytest.raises(ValueError, match="the seed ranges 0-59 and 50-109 overlap: start them at least 60 apart"):
        ranges.seed_ranges([50, 0], 60)
    with pytest.raises(ValueError, match="paired ratios need the same seed ranges: 3 scores against 2"):
        ranges.paired_ratios(good, good[:2])
