import pytest
import torch
from torch import nn

from dlbench.interfaces import Tokenizer
from dlbench.nn.vqvae import VQVAE, VQVAEConfig, code_distances, perplexity
from dlbench.registry import DlbenchError, Registry

TINY = dict(channels=8, code_dim=4, codebook_size=16, res_blocks=1)


def _model(**kw):
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**TINY, **kw}), channels=1, resolution=16)


def test_registers_as_tokenizer_and_shapes():
    Registry().add("tokenizer", "vqvae", VQVAE)  # structural interface check
    m = _model()
    assert isinstance(m, Tokenizer)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    codes = m.encode(x)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert m.token_grid(16, 16) == (4, 4) and m.token_grid(32, 8) == (8, 2)
    y = m.decode(codes)
    assert y.shape == (2, 1, 16, 16) and y.min() >= -1 and y.max() <= 1
    assert m.codebook().shape == (16, 4)
    assert _model(downsample=2).encode(x).shape == (2, 8, 8)


def test_bad_config_is_actionable():
    with pytest.raises(DlbenchError, match="power of 2"):
        _model(downsample=3)
    with pytest.raises(DlbenchError, match="not divisible"):
        VQVAE(VQVAEConfig(downsample=8), channels=1, resolution=20)


def test_distances_match_float64_cdist_and_perplexity_closed_form():
    z = torch.randn(2, 3, 3, 5)
    cb = torch.randn(7, 5)
    ref = torch.cdist(z.double().reshape(-1, 5), cb.double()).pow(2).reshape(2, 3, 3, 7)
    torch.testing.assert_close(code_distances(z, cb).double(), ref, atol=1e-4, rtol=1e-4)
    assert torch.isclose(perplexity(torch.arange(8), 16), torch.tensor(8.0))
    assert torch.isclose(perplexity(torch.zeros(10, dtype=torch.long), 16), torch.tensor(1.0))


def test_straight_through_gradients_reach_encoder_and_codebook():
    m = _model()
    loss, terms = m.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert {"recon", "commit", "codebook", "perplexity"} <= set(terms)
    loss.backward()
    assert m.embedding.grad is not None and m.embedding.grad.abs().sum() > 0
    assert m.encoder[0].weight.grad.abs().sum() > 0  # through the straight-through estimator
    expected = terms["recon"] + 0.25 * terms["commit"] + terms["codebook"]
    torch.testing.assert_close(loss, expected)


def test_ema_codebook_closed_form():
    """decay=0, eps->0: each used code becomes the mean of the encoder outputs assigned to it."""
    m = _model(quantizer="ema", ema_decay=0.0, ema_eps=1e-12)
    assert not m.embedding.requires_grad
    z = torch.randn(1, 4, 4, 4)
    out = m.quantize(z)
    cb = m.embedding.detach()
    for k in out.codes.unique():
        sel = z.reshape(-1, 4)[(out.codes == k).reshape(-1)]
        torch.testing.assert_close(cb[k], sel.mean(0), atol=1e-5, rtol=1e-5)
    assert "codebook" not in out.loss_terms


def test_dead_code_restart_reseeds_unused_codes_from_encoder_outputs():
    m = _model(restart_every=1)
    m.train()
    before = m.embedding.detach().clone()
    z = torch.randn(1, 4, 4, 4) + 10.0  # far from all codes: only one code gets used
    codes = m.quantize(z).codes
    restarted = m._restart_dead_codes(z, codes)
    used = set(codes.unique().tolist())
    assert restarted == 16 - len(used)
    after = m.embedding.detach()
    outputs = {tuple(r.tolist()) for r in z.reshape(-1, 4)}
    for k in range(16):
        if k in used:
            assert torch.equal(after[k], before[k])
        else:
            assert tuple(after[k].tolist()) in outputs
    assert m.usage.sum() == 0  # window reset


class _Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.seen = None

    def forward(self, **tensors):
        self.seen = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in tensors.items()}
        return self.scale * tensors["logits"].softmax(-1).mean()


def test_regularizer_hook_receives_tensors_and_adds_weighted_term():
    m = _model()
    probe = _Probe()
    m.add_regularizer("probe", 0.5, probe)
    assert any(p is probe.scale for p in m.parameters())  # trains and checkpoints with the tokenizer
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.manual_seed(1)
    loss, terms = m.training_loss(x)
    assert probe.seen == {
        "logits": (2, 4, 4, 16), "probs": (2, 4, 4, 16), "distances": (2, 4, 4, 16), "z_e": (2, 4, 4, 4),
        "z_q": (2, 4, 4, 4), "z_best": (2, 4, 4, 4), "z_sampled": (2, 4, 4, 4), "codes": (2, 4, 4),
        "images": (2, 1, 16, 16), "recon": (2, 1, 16, 16), "encoder": "Sequential", "step": "int",
        "rec_loss": (), "encoder_last_layer": tuple(m.encoder[-1].weight.shape),
    }  # the keywords documented on dlbench.interfaces.Regularizer
    base = terms["recon"] + 0.25 * terms["commit"] + terms["codebook"]
    torch.testing.assert_close(loss, base + 0.5 * terms["probe"])
    torch.testing.assert_close(terms["probe"], torch.tensor(2.0 / 16))
    with pytest.raises(DlbenchError, match="twice"):
        m.add_regularizer("probe", 1.0, _Probe())


def test_few_steps_reduce_reconstruction_error():
    m = _model()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, terms = m.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(terms["recon"].detach())
    assert float(terms["recon"].detach()) < 0.7 * first
