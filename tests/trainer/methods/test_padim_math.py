import numpy as np
import torch

from linewatch.trainer.methods.padim.gaussians import GaussianStats, regularised_inverse
from linewatch.trainer.methods.padim.model import PadimModel


def test_exact_merge_equals_statistics_of_all_data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 7, 5, generator=g)
    b = torch.randn(80, 7, 5, generator=g) * 2 + 3
    merged = GaussianStats.from_features(a).merge(GaussianStats.from_features(b))
    joint = GaussianStats.from_features(torch.cat([a, b]))
    assert merged.n == 130
    torch.testing.assert_close(merged.mean, joint.mean)
    torch.testing.assert_close(merged.covariance(), joint.covariance())
    ref = np.cov(torch.cat([a, b])[:, 3].numpy().T)
    np.testing.assert_allclose(merged.covariance()[3].numpy(), ref, rtol=1e-9)


def test_mahalanobis_against_numpy():
    g = torch.Generator().manual_seed(1)
    stats = GaussianStats.from_features(torch.randn(60, 4, 3, generator=g))
    mean = stats.mean.float().unsqueeze(0)
    inv = regularised_inverse(stats.covariance(), 0.01).float().unsqueeze(0)
    q = torch.randn(2, 4, 3, generator=g)
    got = PadimModel.distances(None, q, mean, inv)  # (B, S, P)
    for b in range(2):
        for p in range(4):
            d = (q[b, p] - mean[0, p]).numpy()
            ref = np.sqrt(d @ inv[0, p].numpy() @ d)
            assert abs(float(got[b, 0, p]) - ref) < 1e-4
