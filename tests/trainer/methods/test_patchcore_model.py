"""The exported scoring math against a brute-force reference (cdist, explicit loops)."""

import torch

from linewatch.trainer.methods.patchcore.method import PatchCore, PatchCoreConfig, _self_knn


class _Stub(torch.nn.Module):
    pass


def _reference(q, bank, knn):
    """Per image: task by lowest mean NN distance, then re-weighted NN distance per patch."""
    scores, tasks = [], []
    for qi in q:
        per_task = [torch.cdist(qi, b) for b in bank]  # T x (P, M)
        t = int(torch.stack([d.min(1).values.mean() for d in per_task]).argmin())
        d = per_task[t]
        nn_d, nn_i = d.min(1)
        out = []
        for p in range(len(qi)):
            neigh = bank[t][knn[t][nn_i[p]]]
            dk = torch.cdist(qi[p : p + 1], neigh).squeeze(0)
            w = 1 - torch.softmax(dk, 0)[0]
            out.append(w * nn_d[p])
        scores.append(torch.stack(out))
        tasks.append(t)
    return torch.stack(scores), torch.tensor(tasks)


def test_patch_scores_match_reference():
    g = torch.Generator().manual_seed(0)
    banks = [torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g) + 3]
    knn = torch.stack([_self_knn(b, 4) for b in banks])
    bank = torch.stack(banks)
    q = torch.cat([torch.randn(1, 12, 6, generator=g), torch.randn(1, 12, 6, generator=g) + 3])
    from linewatch.trainer.methods.patchcore.model import PatchCoreModel

    scores, task = PatchCoreModel.patch_scores(None, q, bank, knn)
    ref_scores, ref_task = _reference(q, bank, knn)
    assert task.tolist() == ref_task.tolist() == [0, 1]
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_self_knn_puts_each_point_first():
    b = torch.randn(100, 5)
    knn = _self_knn(b, 3, chunk=17)
    assert knn[:, 0].tolist() == list(range(100))
    ref = torch.cdist(b, b).topk(3, largest=False).indices
    assert torch.equal(knn[:, 1:].sort(1).values, ref[:, 1:].sort(1).values)


def test_padded_bank_keeps_nearest_neighbours():
    pc = PatchCore.__new__(PatchCore)
    pc.coresets = [torch.randn(30, 4), torch.randn(12, 4)]
    pc.cfg = PatchCoreConfig(reweight_k=3, budget=40)
    pc._bank_cache = None
    bank, knn = pc.banks()
    assert bank.shape == (2, 30, 4) and knn.shape == (2, 30, 3)  # max(budget // 2, largest coreset)
    # the short task's rows are repeats of its own points only
    assert {tuple(r.tolist()) for r in bank[1]} == {tuple(r.tolist()) for r in pc.coresets[1]}
    assert int(knn[1].max()) < 12
    pc.cfg = pc.cfg.model_copy(update={"budget": 200})
    pc._bank_cache = None
    assert pc.banks()[0].shape == (2, 100, 4)  # padded to the budget share


def test_chunked_nearest_neighbour_is_the_dense_one():
    """Chunks that do not divide M, one chunk, and padded repeats all give the dense nearest
    point and its distance. A repeat is an exact tie, and torch's topk may name either copy
    (the same point, with the same neighbours, so the same score): compare points, not rows."""
    from linewatch.trainer.methods.patchcore.knn import dense_nearest_per_task, nearest_per_task

    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 37, 8, generator=g)
    bank = torch.cat([base, base[:, :13]], 1)  # (3, 50, 8): rows 37.. repeat rows 0..12 (ties)
    q = bank[:, :20].reshape(1, 60, 8).repeat(2, 1, 1) + 0.05 * torch.randn(2, 60, 8, generator=g)
    want_d2, want_i = dense_nearest_per_task(q, bank)
    for chunk in (7, 16, 50, 64):
        d2, idx = nearest_per_task(q, bank, chunk=chunk)
        assert idx.shape == want_i.shape == (2, 60, 3)
        assert torch.equal(idx % 37, want_i % 37), chunk
        torch.testing.assert_close(d2, want_d2, rtol=1e-5, atol=1e-5)
