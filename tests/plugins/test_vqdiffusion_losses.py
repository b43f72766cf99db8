"""VQ-Diffusion loss terms and the importance sampler of t."""

from __future__ import annotations

import torch

from dlbench.schedules.discrete import MaskAndReplaceSchedule
from dlbench_vqdiffusion.kernel import TransitionKernel, log_onehot
from dlbench_vqdiffusion.losses import ImportanceTimeSampler, aux_weight, vlb_terms


def test_importance_sampler_is_uniform_until_warm_then_prefers_high_loss_t():
    sampler = ImportanceTimeSampler(5, warmup=2)
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    losses = torch.tensor([1.0, 1.0, 1.0, 10.0, 1.0])
    for step in range(3):
        assert not sampler.warmed_up
        torch.testing.assert_close(sampler.probabilities(), uniform)
        t = torch.arange(1, 6)
        sampler.update(t, losses[t - 1])
    assert sampler.warmed_up  # every t seen 3 > 2 times
    p = sampler.probabilities()
    assert int(p.argmax()) == 3 and float(p[3]) > 0.5
    torch.testing.assert_close(p[0], p[1])  # the decoder term t=1 takes t=2's weight
    t, pt = sampler.sample(4000, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert int(t.min()) >= 1 and int(t.max()) <= 5
    assert float((t == 4).float().mean()) > 0.5
    torch.testing.assert_close(pt, p[t - 1].float())
    # the history is checkpointed with the model
    state = sampler.state_dict()
    fresh = ImportanceTimeSampler(5, warmup=2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.probabilities(), p)


def test_importance_update_does_not_depend_on_order_within_a_batch():
    a, b = ImportanceTimeSampler(3), ImportanceTimeSampler(3)
    t = torch.tensor([2, 2, 1])
    loss = torch.tensor([1.0, 3.0, 2.0])
    a.update(t, loss)
    b.update(t.flip(0), loss.flip(0))
    assert torch.equal(a.loss_sq_history, b.loss_sq_history) and torch.equal(a.count, torch.tensor([1, 2, 0]))


def test_vlb_is_zero_for_a_perfect_model_and_aux_is_the_x0_cross_entropy():
    k, steps = 5, 6
    kernel = TransitionKernel(MaskAndReplaceSchedule().coefficients(steps, k), k)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, k, (4, 9), generator=g)
    t = torch.tensor([1, 2, 4, 6])
    u = torch.rand(4, 9, k + 1, generator=g, dtype=torch.float64)
    xt = kernel.q_sample(x0, t, -torch.log(-torch.log(u)))
    true_p = log_onehot(x0, k)
    log_true = kernel.posterior(true_p, xt, t)
    perfect = vlb_terms(log_true, log_true, true_p.clamp(-70, 0), x0, xt, t, k)
    assert float(perfect["vlb"][1:].abs().max()) < 1e-12  # KL(q || q) = 0
    assert float(perfect["decoder_nll"][0]) < 1e-12  # the decoder assigns prob 1 to x0
    log_p = torch.log_softmax(torch.randn(4, 9, k, generator=g, dtype=torch.float64), -1)
    terms = vlb_terms(log_true, kernel.posterior(log_p, xt, t), log_p, x0, xt, t, k)
    ce = -log_p.gather(-1, x0[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(terms["aux"][1:], ce[1:])
    torch.testing.assert_close(terms["aux"][0], terms["decoder_nll"][0])  # t = 1 uses the decoder NLL
    assert bool((terms["vlb"][1:] > 0).all())


def test_aux_weight_falls_linearly_from_two():
    w = aux_weight(torch.tensor([1, 51, 100]), 100)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5, 1.01]))
    assert torch.equal(aux_weight(torch.tensor([3]), 100, adaptive=False), torch.ones(1))
