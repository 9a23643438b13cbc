"""infd_solve.metrics.frechet_distance against scipy's matrix square root, and with fewer samples than features
(one image's crops in CLIP features), where the covariances are singular."""

import numpy as np
import pytest
import scipy.linalg
import torch

from infd_solve.metrics import frechet_distance


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula with scipy's sqrtm (as the usual FID code computes it)."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))


@pytest.mark.parametrize("n_a, n_b, dim", [(200, 150, 6), (5, 7, 6), (4, 9, 16)])
def test_matches_scipy_with_more_or_fewer_samples_than_features(n_a, n_b, dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n_a, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(n_b, dim)) * 2 + 0.5
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(scipy_frechet(a, b), rel=1e-6)


def test_few_samples_of_wide_features_give_a_finite_distance():
    """Three crops of one image in 512-d features (eval_inverse --scenes 1): the eigendecomposition path failed
    to converge on such covariances; a set against itself is at distance 0, a shifted copy at its shift."""
    features = torch.randn(3, 512, generator=torch.Generator().manual_seed(0)).float()
    assert abs(frechet_distance(features, features)) < 1e-9
    assert frechet_distance(features, features + 0.1) == pytest.approx(512 * 0.01, rel=1e-6)
    other = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    assert np.isfinite(frechet_distance(features, other)) and frechet_distance(features, other) > 0


def test_refuses_sets_it_cannot_fit():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.zeros(1, 8), torch.zeros(5, 8))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(4, 8), torch.zeros(5, 9))
