import torch

from linewatch.trainer.methods.patchcore.coreset import coverage_radius, greedy_coreset


def _reference_greedy(x: torch.Tensor, n: int, first: int) -> list[int]:
    """Textbook k-center greedy with explicit distances."""
    chosen = [first]
    min_d = torch.cdist(x, x[first : first + 1]).squeeze(1)
    for _ in range(n - 1):
        nxt = int(torch.argmax(min_d))
        chosen.append(nxt)
        min_d = torch.minimum(min_d, torch.cdist(x, x[nxt : nxt + 1]).squeeze(1))
    return chosen


def test_matches_textbook_greedy_without_projection():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    idx = greedy_coreset(x, 40, proj_dim=None, seed=3, progress=False)
    assert idx.tolist() == _reference_greedy(x, 40, int(idx[0]))


def test_deterministic_and_distinct():
    x = torch.randn(2000, 64)
    a = greedy_coreset(x, 100, proj_dim=16, seed=5, progress=False)
    b = greedy_coreset(x, 100, proj_dim=16, seed=5, progress=False)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) == 100


def test_projected_greedy_keeps_rare_modes():
    """The point of k-center: a rare cluster (where a random subset has no point) is covered."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3000, 32, generator=g), torch.randn(5, 32, generator=g) * 0.5 + 6])
    idx = greedy_coreset(x, 150, proj_dim=16, seed=0, progress=False)
    assert (idx >= 3000).any()
    assert coverage_radius(x, x[idx]) < 0.5 * coverage_radius(x, x[:150])


def test_asking_for_everything_returns_everything():
    x = torch.randn(10, 4)
    assert greedy_coreset(x, 50, progress=False).tolist() == list(range(10))


def test_two_stage_selection_of_large_sets_covers_like_one_greedy_pass():
    """Above 2 x chunk candidates the selection runs per chunk, then over the union: distinct,
    deterministic, rare modes kept, and a coverage radius close to the one-pass greedy's."""
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(6000, 32, generator=g), torch.randn(4, 32, generator=g) * 0.5 + 6])
    two = greedy_coreset(x, 300, proj_dim=16, seed=1, progress=False, chunk=1000)
    assert torch.equal(two, greedy_coreset(x, 300, proj_dim=16, seed=1, progress=False, chunk=1000))
    assert len(set(two.tolist())) == 300 and (two >= 6000).any()
    one = greedy_coreset(x, 300, proj_dim=16, seed=1, progress=False, chunk=10**9)
    assert not torch.equal(one, two)  # the two-stage path really ran
    assert coverage_radius(x, x[two]) <= 1.15 * coverage_radius(x, x[one])
