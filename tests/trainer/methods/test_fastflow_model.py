"""FastFlow's hand-written flow: a bijection whose log-determinant is the true one, the reference's
alternating 3x3 / 1x1 subnets, anomalib's map, and a frozen backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.fastflow.method import FastFlow
from linewatch.trainer.methods.fastflow.model import AffineCoupling, Flow2d, flow_nll, level_map
from linewatch.trainer.methods.registry import build_method


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def _randomised(flow: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights (the last convs and global affines start near identity otherwise)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return flow.double()


def test_flow_is_invertible_and_its_logdet_is_the_jacobians() -> None:
    flow = _randomised(Flow2d(5, 4, 1.0, 2.0, False, torch.Generator().manual_seed(0)))
    x = torch.randn(2, 5, 3, 2, dtype=torch.float64)
    z, logdet = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow(v.view(1, 5, 3, 2))[0].flatten(), x[b].flatten()
        )
        assert abs(torch.linalg.slogdet(jac).logabsdet - logdet[b]) < 1e-8


def test_subnets_alternate_3x3_and_1x1_and_clamp_bounds_the_scale() -> None:
    flow = Flow2d(8, 8, 1.0, 2.0, False, torch.Generator().manual_seed(0))
    kernels = [step.subnet[0].kernel_size[0] for step in flow.steps]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]
    only3 = Flow2d(8, 2, 1.0, 2.0, True, torch.Generator().manual_seed(0))
    assert [s.subnet[0].kernel_size[0] for s in only3.steps] == [3, 3]
    step = AffineCoupling(4, 1, 1.0, 2.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        step.subnet[2].bias.fill_(1e4)  # a huge raw log-scale
    with torch.no_grad():
        _, logdet = step(torch.zeros(1, 4, 1, 1))
    assert float(logdet) <= 2.0 * 2 + 1e-5  # at most clamp per transformed element


def test_loss_and_map_are_anomalibs() -> None:
    z = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    logdet = torch.tensor([0.5])
    assert torch.isclose(flow_nll(z, logdet), torch.tensor(0.5 * 5.0 - 0.5))
    expected = -torch.exp(-0.5 * torch.tensor([[[0.5, 2.0]]]))
    assert torch.allclose(level_map(z), expected)


@pytest.fixture(scope="module")
def fastflow() -> FastFlow:
    return build_method("fastflow", "replay", image_size=(64, 64), progress=False, steps=2, flow_steps=2)


def test_backbone_is_frozen_only_the_flows_learn_and_state_is_the_flows(fastflow: FastFlow) -> None:
    assert fastflow.config["layers"] == [1, 2, 3] and fastflow.config["backbone"] == "tf_efficientnet_lite0"
    before_b = {k: v.clone() for k, v in fastflow.model.backbone.state_dict().items()}
    before_f = fastflow.model.head.flows[0].steps[0].subnet[0].weight.detach().clone()
    rng = np.random.default_rng(0)
    fastflow.fit_task("noise", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    after_b = fastflow.model.backbone.state_dict()
    assert all(torch.equal(before_b[k], after_b[k]) for k in before_b)  # BN statistics included
    assert not torch.equal(before_f, fastflow.model.head.flows[0].steps[0].subnet[0].weight)
    tensors, _ = fastflow.state()
    assert all(k.startswith(("flows.", "replay.")) for k in tensors)
    assert len(fastflow.model.head.flows) == 3 and all(len(f.steps) == 2 for f in fastflow.model.head.flows)
