"""Exact checks of evaluation/frechet.py: values computed another way, float64 throughout, the
reduction over processes, the statistics files and their error messages (see MUTATION.md)."""
import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.stats import ortho_group

from fewstep.evaluation import FeatureStats, frechet_distance, load_stats, save_stats


def textbook(mu1, sigma1, mu2, sigma2):
    """`||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))` in float64 with scipy's matrix square root."""
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2))
    return ((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2) - 2 * np.trace(sqrtm(sigma1 @ sigma2)).real


def spd(d, seed, dtype=np.float64):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return (a @ a.T / d + 0.5 * np.eye(d)).astype(dtype)


def commuting(a, b, seed):
    """`Q diag(a) Q^T` and `Q diag(b) Q^T` for one random rotation `Q`, exactly symmetric: their distance
    (at equal means) is `sum (sqrt a - sqrt b)^2`, however singular either is."""
    q = ortho_group.rvs(len(a), random_state=seed)
    s1, s2 = ((q * np.asarray(v)) @ q.T for v in (a, b))
    return (s1 + s1.T) / 2, (s2 + s2.T) / 2, ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()


def test_the_value_is_the_textbook_formula_term_by_term():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5) * 3, rng.standard_normal(5) * 3    # differences of both signs, not 0 or 1
    s1, s2 = spd(5, 1), spd(5, 2) * 4
    expected = textbook(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-12)
    # one dimension by hand: (1 - 3)^2 + 4 + 9 - 2 sqrt(4 * 9) = 5; scalar variances are 1x1 matrices
    assert frechet_distance([1.0], 4.0, [3.0], 9.0) == 5.0


def test_means_of_any_shape_are_flattened():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.standard_normal(4), rng.standard_normal(4), spd(4, 3), spd(4, 4)
    flat = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1[None, :], s1, mu2[:, None], s2) == flat
    assert frechet_distance(mu1.tolist(), s1.tolist(), mu2.tolist(), s2.tolist()) == flat


def test_float32_statistics_are_computed_in_float64():
    rng = np.random.default_rng(2)
    mu1, mu2 = (rng.standard_normal(50) * 1000).astype(np.float32), (rng.standard_normal(50) * 1000).astype(np.float32)
    zero, one = np.zeros(50), np.eye(50)
    expected = ((mu1.astype(np.float64) - mu2.astype(np.float64)) ** 2).sum()
    assert expected != pytest.approx(((mu1 - mu2) ** 2).sum(dtype=np.float32), rel=1e-9)  # float32 would be off
    assert frechet_distance(mu1, one, mu2, one) == pytest.approx(expected, rel=1e-14)

    s1, s2 = spd(8, 5, np.float32), spd(8, 6, np.float32)
    expected = textbook(zero[:8], s1, zero[:8], s2)                       # of the same float32 numbers
    assert frechet_distance(zero[:8], s1, zero[:8], s2) == pytest.approx(expected, rel=1e-11)


def test_singular_first_covariance_with_rounding_below_zero():
    """Dead directions make `S1` singular: Cholesky fails and its symmetric square root is used, where the
    zero eigenvalues come out of `eigh` slightly negative and must count as 0 (else the root is NaN)."""
    a = [4.0, 2.25, 1.0, 0.25, 0.09, 0.0, 0.0, 0.0]
    b = [1.0, 0.5, 3.0, 0.01, 2.0, 1.5, 0.2, 0.7]
    s1, s2, trace_part = commuting(a, b, seed=0)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)
    assert np.linalg.eigvalsh(s1).min() < 0                               # the rounding this test is about
    mu1, mu2 = np.arange(8.0), np.arange(8.0) * -0.5
    expected = ((mu1 - mu2) ** 2).sum() + trace_part
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, abs=1e-6)   # the singular one second


def test_singular_second_covariance_with_rounding_below_zero():
    """`S1` regular, `S2` singular: `L^T S2 L` has zero eigenvalues that rounding makes negative."""
    a = [0.3, 2.0, 1.0, 0.5, 4.0, 0.8]
    b = [1.0, 0.0, 0.0, 0.04, 0.0, 0.6]
    s1, s2, trace_part = commuting(a, b, seed=1)
    factor = np.linalg.cholesky(s1)
    middle = factor.T @ s2 @ factor
    assert np.linalg.eigvalsh((middle + middle.T) / 2).min() < 0          # the rounding this test is about
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(trace_part, abs=1e-6)


def test_dimension_mismatches_name_every_shape():
    with pytest.raises(ValueError) as error:
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(2))
    assert str(error.value) == "statistics of different dimensions: mu1 (3,), sigma1 (3, 3), mu2 (4,), sigma2 (2, 2)"
    with pytest.raises(ValueError) as error:
        frechet_distance(np.zeros(2), np.zeros((2, 3)), np.zeros(2), np.eye(2))
    assert str(error.value) == "statistics of different dimensions: mu1 (2,), sigma1 (2, 3), mu2 (2,), sigma2 (2, 2)"


def test_statistics_start_at_zero_in_float64_on_the_given_device():
    stats = FeatureStats(3)
    for tensor, shape in ((stats.n, ()), (stats.total, (3,)), (stats.outer, (3, 3))):
        assert tensor.shape == shape and tensor.dtype == torch.float64 and not tensor.any()
    meta = FeatureStats(3, device="meta")
    meta.update(torch.ones(2, 3))                                         # features follow the statistics
    assert [t.device.type for t in (meta.n, meta.total, meta.outer)] == ["meta"] * 3


def test_sums_are_float64_for_float32_features():
    f = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 1000 + 1e4   # float32
    stats = FeatureStats(4)
    stats.update(f[:40])
    stats.update(f[40:])
    x = f.double()
    assert stats.total.dtype == stats.outer.dtype == torch.float64
    assert not torch.equal(f.T @ f, (x.T @ x).float())                  # float32 products would be off
    np.testing.assert_allclose(stats.total.numpy(), x.sum(0).numpy(), rtol=1e-15)
    np.testing.assert_allclose(stats.outer.numpy(), (x.T @ x).numpy(), rtol=1e-14)
    assert float(stats.n) == 64
    big = FeatureStats(1)
    big.update(torch.tensor([[2.0 ** 24 + 1]], dtype=torch.float64))     # not a float32
    big.update(torch.tensor([[1.0]], dtype=torch.float64))
    assert big.total.item() == 2.0 ** 24 + 2


def test_features_are_flattened_and_checked_against_the_dimension():
    f = torch.arange(30.0).reshape(5, 2, 3) ** 1.5
    stats = FeatureStats(6)
    stats.update(f)
    np.testing.assert_allclose(stats.total.numpy(), f.reshape(5, 6).double().sum(0).numpy(), rtol=1e-15)
    for shape, message in (((2, 5), "features of dimension 5, expected 6"),
                           ((2, 2, 2), "features of dimension 4, expected 6")):
        with pytest.raises(ValueError) as error:
            stats.update(torch.zeros(shape))
        assert str(error.value) == message
    assert float(stats.n) == 5                                            # refused batches are not counted


def test_two_samples_suffice_and_dead_features_have_zero_variance():
    f = torch.tensor([[1.0, 0.5, -2.0], [4.0, 0.5, 3.0]])
    stats = FeatureStats(3)
    stats.update(f)
    mu, sigma = stats.mu_sigma()
    np.testing.assert_allclose(mu, [2.5, 0.5, 0.5], rtol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-14)
    assert not sigma[1].any() and not sigma[:, 1].any()                  # the constant feature, exactly


@pytest.mark.parametrize("samples", [0, 1])
def test_fewer_than_two_samples_are_refused_by_count(samples):
    stats = FeatureStats(2)
    if samples:                                                           # (an empty batch cannot be reshaped)
        stats.update(torch.ones(samples, 2))
    with pytest.raises(ValueError) as error:
        stats.mu_sigma()
    assert str(error.value) == f"statistics need at least two samples, got {samples}"


class TwoProcesses:
    """The part of `accelerate.Accelerator` that `FeatureStats.reduce` uses, `reduce(tensor, reduction)`,
    for two processes: this one and one whose statistics are `other`. Like `accelerate.utils.reduce`,
    "mean" divides the sum by the number of processes, "max" takes the maximum and any other value sums."""

    def __init__(self, other: FeatureStats):
        self.other = {t.dim(): t for t in (other.n, other.total, other.outer)}  # n, total, outer by rank
        self.reduced = []

    def reduce(self, tensor, reduction="sum", scale=1.0):
        self.reduced.append(tensor.dim())
        both = torch.stack([tensor, self.other[tensor.dim()]])
        if reduction == "max":
            return both.max(0).values
        return both.sum(0) / 2 if reduction == "mean" else both.sum(0)


def test_reduce_adds_the_statistics_of_every_process():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 1
    mine, theirs = FeatureStats(4), FeatureStats(4)
    mine.update(x[:170])
    theirs.update(x[170:])                                                # unequal shares
    accelerator = TwoProcesses(theirs)
    assert mine.reduce(accelerator) is mine
    assert sorted(accelerator.reduced) == [0, 1, 2]
    assert float(mine.n) == 300 and float(theirs.n) == 130
    mu, sigma = mine.mu_sigma()
    np.testing.assert_allclose(mu, x.mean(0).numpy(), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-12)


def test_saved_statistics_are_float64_in_new_nested_folders(tmp_path):
    mu, sigma = np.float32([1.1, -2.3]), np.float32([[1.7, 0.3], [0.3, 2.9]])
    target = tmp_path / "cache" / "digits" / "ref.npz"
    assert save_stats(str(target), mu, sigma) == target
    with np.load(target) as data:
        assert sorted(data.files) == ["mu", "sigma"]
        assert data["mu"].dtype == data["sigma"].dtype == np.float64
        np.testing.assert_array_equal(data["mu"], mu.astype(np.float64))
        np.testing.assert_array_equal(data["sigma"], sigma.astype(np.float64))
    save_stats(target, np.zeros(2), np.eye(2))                            # again, into the folder now there
    loaded = load_stats(target)
    np.testing.assert_array_equal(loaded[0], np.zeros(2))
    np.testing.assert_array_equal(loaded[1], np.eye(2))
    assert [p.name for p in target.parent.iterdir()] == ["ref.npz"]       # nothing partial left behind


def test_loading_names_what_is_missing(tmp_path):
    for missing in (tmp_path / "none.npz", tmp_path):                     # no file, or a folder
        with pytest.raises(FileNotFoundError) as error:
            load_stats(missing)
        assert str(error.value) == f"statistics file does not exist: {missing}"
    cases = {"empty.npz": ({}, "has no mu or sigma (keys: none)"),
             "two.npz": ({"mean": 0, "cov": 1}, "has no mu or sigma (keys: mean, cov)"),
             "mu.npz": ({"mu": np.zeros(2)}, "has no sigma (keys: mu)")}
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError) as error:
            load_stats(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name} {message}"


def test_loaded_statistics_of_the_wrong_shape_are_refused(tmp_path):
    path = save_stats(tmp_path / "ref.npz", np.zeros(3), np.eye(4))
    mu, sigma = load_stats(path)
    assert mu.shape == (3,) and sigma.shape == (4, 4)
    with pytest.raises(ValueError) as error:
        frechet_distance(mu, sigma, np.zeros(3), np.eye(3))
    assert str(error.value) == "statistics of different dimensions: mu1 (3,), sigma1 (4, 4), mu2 (3,), sigma2 (3, 3)"


def test_an_empty_batch_adds_nothing_to_the_statistics():
    """A process that got no seeds contributes a (0, d) batch: the sums must be those of the others."""
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    stats, alone = FeatureStats(3), FeatureStats(3)
    stats.update(features[:20])
    stats.update(features[:0])
    stats.update(features[20:])
    alone.update(features)
    assert stats.n == alone.n == 50
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(stats.mu_sigma(), alone.mu_sigma()))
    with pytest.raises(ValueError, match="features of dimension 4, expected 3"):
        stats.update(torch.zeros(0, 4))


def test_one_scalar_feature_per_sample_is_a_one_dimensional_feature():
    values = torch.arange(6, dtype=torch.float32) ** 2
    flat, column = FeatureStats(1), FeatureStats(1)
    flat.update(values)
    column.update(values[:, None])
    mu, sigma = flat.mu_sigma()
    assert np.array_equal(mu, column.mu_sigma()[0]) and np.array_equal(sigma, column.mu_sigma()[1])
    assert mu.tolist() == pytest.approx([55 / 6]) and sigma.ravel().tolist() == pytest.approx([values.double().var().item()])
