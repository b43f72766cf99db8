"""`--preset paper` per dataset: the published setting (VQGAN f16, 16x16 tokens), provenance, refusal."""

import pytest
import torch

from dlbench.config import build_config
from dlbench.paper_presets import PAPER_DATASETS, PAPER_METHODS, PROVENANCE, leaves
from dlbench.plugins import get_registry
from dlbench.registry import DlbenchError


def _methods():
    return get_registry().names("method")


def test_ffhq_paper_resolves_to_vqgan_f16_and_16x16_tokens():
    from dlbench.nn.vqgan import VQGAN, VQGANConfig

    cfg = build_config("vqlcmd", registry=get_registry(), preset="paper", dataset="ffhq")
    assert cfg.tokenizer.name == "vqgan" and cfg.dataset.params["resolution"] == 256
    tok_cfg = VQGANConfig(**cfg.tokenizer.params)
    assert tok_cfg.downsample == 16 and tok_cfg.codebook_size == 1024 and tok_cfg.code_dim == 256
    with torch.device("meta"):
        tok = VQGAN(tok_cfg, channels=3, resolution=256)
    assert tok.token_grid(256, 256) == (16, 16)
    assert cfg.sampling.steps == 200 and cfg.backbone.preset == "vqdiffusion-ffhq"
    assert cfg.training.steps == 82_032  # 300 epochs of 70k images at batch 256 (METHODS.md B.5)
    assert cfg.evaluation.protocol == "paper"


def test_paper_without_a_paper_dataset_is_refused_with_the_list():
    with pytest.raises(DlbenchError, match="ffhq, lsun-church, lsun-bedroom, imagenet.*not 'fashion-mnist-small'"):
        build_config("vqlcmd", registry=get_registry(), preset="paper")
    with pytest.raises(DlbenchError, match="not 'cifar10'"):
        build_config("vq-diffusion", registry=get_registry(), preset="paper", dataset="cifar10")


def test_every_paper_value_states_its_provenance():
    paths = set()
    for layer in [*PAPER_DATASETS.values(), *PAPER_METHODS.values()]:
        paths |= set(leaves(layer))
    missing = sorted(p for p in paths if p not in PROVENANCE)
    assert not missing, f"paper preset values without provenance: {missing}"
    assert all(v.startswith(("sourced", "dlbench")) or "sourced" in v or "dlbench" in v for v in PROVENANCE.values())


@pytest.mark.parametrize("dataset", list(PAPER_DATASETS))
def test_every_method_resolves_on_every_paper_dataset(dataset):
    for method in _methods():
        cfg = build_config(method, registry=get_registry(), preset="paper", dataset=dataset)
        assert cfg.dataset.name == dataset
        if method == "regvq":  # a method that brings its own tokenizer keeps it
            assert cfg.tokenizer.name == "regvq"
        else:
            assert cfg.tokenizer.name == "vqgan"
    vq = build_config("vq-diffusion", registry=get_registry(), preset="paper", dataset=dataset)
    assert vq.sampling.steps <= vq.method.params["num_steps"]


def test_later_layers_still_win():
    cfg = build_config("vqlcmd", registry=get_registry(), preset="paper", dataset="ffhq",
                       overrides=["tokenizer.codebook_size=512", "sampling.steps=100"])
    assert cfg.tokenizer.params["codebook_size"] == 512 and cfg.sampling.steps == 100
    tok = build_config("vqlcmd", registry=get_registry(), preset="paper", dataset="ffhq", tokenizer="vqvae")
    assert tok.tokenizer.name == "vqvae" and "ch_mult" not in tok.tokenizer.params


def test_dry_run_names_the_tokenizer_and_token_grid(capsys, tmp_path):
    from PIL import Image

    from dlbench.cli import main

    # --dry-run runs the pre-flight, which opens the dataset: a few 256 px images in the ffhq folder layout
    for i in range(4):
        Image.new("RGB", (256, 256)).save(tmp_path / f"{i:05d}.png")
    main(["run", "vqlcmd", "--dataset", "ffhq", "--preset", "paper", "--data-dir", str(tmp_path),
          "--set", "evaluation.enabled=false", "--dry-run"])  # 4 images cannot feed the paper protocol
    captured = capsys.readouterr()
    assert '"name": "vqgan"' in captured.out
    assert "tokenizer vqgan (f16, K=1024, d=256) -> 16x16 token grid" in captured.err


def test_scaling_doc_carries_the_generated_table_and_names_no_internal_notes():
    """docs/scaling.md is read by users without the design notes: its provenance table is the module's and
    every source it names is given in full there."""
    from pathlib import Path

    from dlbench.paper_presets import SOURCES, provenance_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    assert provenance_table() in doc
    assert "METHODS.md" not in doc and "../shared" not in doc and "/work/" not in doc
    assert not any("METHODS.md" in v for v in PROVENANCE.values())
    for name, full in SOURCES.items():
        assert f"- **{name}**: {full}." in doc
