"""Speed choices of the trainer change no result: the multi-tensor Adam update (foreach) is
the same arithmetic as the per-tensor one, bit for bit, on the trainer's network."""

import torch

from crbnet.learning.nets import NetConfig, ParameterNet


def _weights_after_steps(foreach: bool) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ParameterNet(6, ["T1", "T2"], [0.05, 0.005], [6.0, 3.0], [True, True],
                           NetConfig(width=32, depth=2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4, foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        z = torch.randn(64, 6, dtype=torch.complex64, generator=gen)
        target = torch.rand(64, 2, generator=gen) + 0.1
        loss = ((net(z) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_foreach_adam_is_bitwise_the_per_tensor_update():
    per_tensor, multi_tensor = _weights_after_steps(False), _weights_after_steps(True)
    assert not torch.equal(per_tensor, _initial_weights())     # the steps did move the weights
    assert torch.equal(per_tensor, multi_tensor)


def _initial_weights() -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ParameterNet(6, ["T1", "T2"], [0.05, 0.005], [6.0, 3.0], [True, True],
                           NetConfig(width=32, depth=2))
    return torch.cat([p.detach().flatten() for p in net.parameters()])
