"""The conformance kit (dlbench.testing): conforming tiny components pass, and each deliberately broken
one fails with a message naming the contract it breaks.

Long because every broken component is a few-line class next to the test that shows its failure, one per
contract of the kit; the list reads as the kit's contract list."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from dlbench.interfaces import (
    ComponentConfig,
    ContinuousSchedule,
    DiscreteSchedule,
    EmbeddingStrategy,
    FeatureExtractor,
    ImageDataset,
    Method,
    MethodContext,
    Tokenizer,
)
from dlbench.seeding import PerSampleRNG
from dlbench.testing import (
    check_config_roundtrip,
    check_continuous_schedule,
    check_dataset,
    check_discrete_schedule,
    check_embedding,
    check_feature_extractor,
    check_method,
    check_schedule,
    check_tokenizer,
)

COND = MethodContext(codebook_size=8, token_grid=(2, 3), num_classes=3)
UNCOND = MethodContext(codebook_size=8, token_grid=(2, 3), num_classes=None)


# ---------------------------------------------------------------------------------------------
# config round trip
# ---------------------------------------------------------------------------------------------


class GoodConfig(ComponentConfig):
    width: int = 4
    rate: float = 0.5
    name: str = "x"


class AllowConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    width: int = 4


class IgnoreConfig(BaseModel):  # pydantic's default: unknown fields dropped without a word
    width: int = 4


class TupleAsAnyConfig(ComponentConfig):
    shape: Any = (1, 2)  # JSON turns the tuple into a list, which ``Any`` keeps: not a round trip


class RequiredConfig(ComponentConfig):
    checkpoint: str


class CustomRejectConfig(BaseModel):
    """Rejects unknown keys with its own ValueError instead of extra='forbid' (the registry needs the latter)."""

    width: int = 4

    @model_validator(mode="before")
    @classmethod
    def _no_unknown(cls, data):
        if isinstance(data, dict) and set(data) - set(cls.model_fields):
            raise ValueError("unknown keys")
        return data


def test_config_roundtrip_passes_strict_config():
    assert check_config_roundtrip(GoodConfig) == GoodConfig()
    assert check_config_roundtrip(RequiredConfig(checkpoint="a.pt")).checkpoint == "a.pt"


@pytest.mark.parametrize("cls", [AllowConfig, IgnoreConfig])
def test_config_roundtrip_rejects_configs_accepting_unknown_fields(cls):
    with pytest.raises(AssertionError, match="unknown fields are silently accepted.*extra='forbid'"):
        check_config_roundtrip(cls)


def test_config_roundtrip_failures_name_the_contract():
    with pytest.raises(AssertionError, match="JSON round trip changed the config"):
        check_config_roundtrip(TupleAsAnyConfig)
    with pytest.raises(AssertionError, match="defaults do not validate.*pass a config instance"):
        check_config_roundtrip(RequiredConfig)
    with pytest.raises(AssertionError, match="another reason than extra='forbid'"):
        check_config_roundtrip(CustomRejectConfig)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


class LinearLogSNR(ContinuousSchedule):
    """lambda(t) = 10 - 20 t: finite, decreasing, VP through the default alpha_sigma."""

    def __init__(self, config=None):
        self.config = config

    def logsnr(self, t):
        return 10 - 20 * t


class IncreasingLogSNR(LinearLogSNR):
    def logsnr(self, t):
        return -10 + 20 * t


class UnclippedLogSNR(LinearLogSNR):
    def logsnr(self, t):
        return torch.log(1 - t) - torch.log(t)  # +-inf at the endpoints


class NotVP(LinearLogSNR):
    def alpha_sigma(self, t):
        return torch.sigmoid(self.logsnr(t)).sqrt(), torch.ones_like(t)  # variance exploding


class InconsistentAlphaSigma(LinearLogSNR):
    def alpha_sigma(self, t):  # VP, but a cosine schedule rather than the logsnr above
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


def test_continuous_schedule_conforming_passes():
    check_continuous_schedule(LinearLogSNR())
    check_schedule(LinearLogSNR())


@pytest.mark.parametrize(
    "schedule, message",
    [
        (IncreasingLogSNR(), "must be non-increasing"),
        (UnclippedLogSNR(), "not finite"),
        (NotVP(), r"alpha\^2 \+ sigma\^2 != 1"),
        (InconsistentAlphaSigma(), "disagrees with logsnr"),
    ],
    ids=["increasing", "infinite", "not-vp", "inconsistent"],
)
def test_continuous_schedule_broken(schedule, message):
    with pytest.raises(AssertionError, match=message):
        check_continuous_schedule(schedule)
    with pytest.raises(AssertionError, match=message):
        check_schedule(schedule)


def _absorbing(num_steps: int, num_classes: int, beta_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Mask-and-replace coefficients from linear cumulative ``alpha_bar``, ``gamma_bar`` (METHODS.md B.1).
    ``beta_classes`` != K reproduces the K vs K+1 confusion in ``beta``."""
    k = beta_classes or num_classes
    frac = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = 1 - 0.6 * frac
    gamma_bar = 0.3 * frac
    prev_a = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    prev_g = torch.cat([torch.zeros(1, dtype=torch.float64), gamma_bar[:-1]])
    alpha = alpha_bar / prev_a
    gamma = 1 - (1 - gamma_bar) / (1 - prev_g)
    return dict(alpha=alpha, beta=(1 - alpha - gamma) / k, gamma=gamma, alpha_bar=alpha_bar,
                beta_bar=(1 - alpha_bar - gamma_bar) / num_classes, gamma_bar=gamma_bar)


class GoodDiscrete(DiscreteSchedule):
    def __init__(self, config=None):
        self.config = config

    def coefficients(self, num_steps, num_classes):
        return _absorbing(num_steps, num_classes)


class BetaOverKPlus1(GoodDiscrete):
    def coefficients(self, num_steps, num_classes):
        return _absorbing(num_steps, num_classes, beta_classes=num_classes + 1)


class CumulativeOnFixedGrid(GoodDiscrete):
    """Cumulative coefficients taken from a fixed 100-step grid, one-step ones at ``num_steps``."""

    def coefficients(self, num_steps, num_classes):
        c = _absorbing(num_steps, num_classes)
        fixed = _absorbing(100, num_classes)
        c.update({k: fixed[k][:num_steps] for k in ("alpha_bar", "beta_bar", "gamma_bar")})
        return c


class GammaBarCumsum(GoodDiscrete):
    def coefficients(self, num_steps, num_classes):
        c = _absorbing(num_steps, num_classes)
        c["gamma_bar"] = torch.cumsum(c["gamma"], 0)  # sum instead of 1 - prod(1 - gamma)
        c["beta_bar"] = (1 - c["alpha_bar"] - c["gamma_bar"]) / num_classes
        return c


class MissingKey(GoodDiscrete):
    def coefficients(self, num_steps, num_classes):
        c = _absorbing(num_steps, num_classes)
        del c["gamma_bar"]
        return c


def test_discrete_schedule_conforming_passes():
    check_discrete_schedule(GoodDiscrete())
    check_schedule(GoodDiscrete())


@pytest.mark.parametrize(
    "schedule, message",
    [
        (BetaOverKPlus1(), r"alpha \+ K\*beta \+ gamma != 1"),
        (CumulativeOnFixedGrid(), r"alpha_bar != cumprod\(alpha\)"),
        (GammaBarCumsum(), r"gamma_bar != 1 - cumprod\(1 - gamma\)"),
        (MissingKey(), "lacks 'gamma_bar'"),
    ],
    ids=["beta-k-plus-1", "fixed-grid-bars", "gamma-bar-cumsum", "missing-key"],
)
def test_discrete_schedule_broken(schedule, message):
    with pytest.raises(AssertionError, match=message):
        check_discrete_schedule(schedule)
    with pytest.raises(AssertionError, match=message):
        check_schedule(schedule)  # dispatches on the family


def test_builtin_schedules_conform():
    """No false alarms on the shipped schedules (both families)."""
    from dlbench.plugins import get_registry

    reg = get_registry()
    names = reg.names("schedule")
    assert names
    for name in names:
        check_schedule(reg.get("schedule", name).build())


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


class TinyConfig(ComponentConfig):
    temperature: float = 1.0


class TinyMethod(Method):
    """Per-position logits (one row per class + unconditional), Gumbel-max from per-sample streams."""

    Config = TinyConfig

    def __init__(self, config, *, context):
        super().__init__()
        self.config = config
        self.k, self.grid = context.codebook_size, context.token_grid
        self.null = context.num_classes or 0
        self.logits = nn.Parameter(torch.randn(self.null + 1, self.grid[0] * self.grid[1], self.k))

    def _rows(self, labels, b):
        return torch.full((b,), self.null) if labels is None else labels

    def loss(self, tokens, labels):
        b = tokens.shape[0]
        logits = self.logits[self._rows(labels, b)]
        loss = nn.functional.cross_entropy(logits.reshape(-1, self.k), tokens.reshape(-1))
        return loss, {"nll": loss.detach()}

    def draw(self, logits, seeds):
        return PerSampleRNG(seeds).categorical(logits)

    def sample(self, labels, seeds, *, num_samples=None, steps=None, guidance=1.0, callback=None, **options):
        b = len(seeds)
        logits = self.logits[self._rows(labels, b)] / self.config.temperature
        return self.draw(logits, seeds).reshape(b, *self.grid)


class GlobalRNGMethod(TinyMethod):
    def draw(self, logits, seeds):
        return torch.distributions.Categorical(logits=logits).sample()


class FirstSeedMethod(TinyMethod):
    """Seeds one generator from the batch's first seed: reproducible, but row i depends on its batch."""

    def draw(self, logits, seeds):
        g = torch.Generator().manual_seed(int(seeds[0]))
        u = torch.rand(logits.shape, generator=g)
        return (logits - torch.log(-torch.log(u))).argmax(-1)


class OutOfRangeMethod(TinyMethod):
    def draw(self, logits, seeds):
        tokens = super().draw(logits, seeds)
        tokens[:, 0] = self.k  # one past the codebook
        return tokens


class Int32Method(TinyMethod):
    def draw(self, logits, seeds):
        return super().draw(logits, seeds).int()


class DetachedLossMethod(TinyMethod):
    def loss(self, tokens, labels):
        with torch.no_grad():
            return super().loss(tokens, labels)


class VectorLossMethod(TinyMethod):
    def loss(self, tokens, labels):
        _, terms = super().loss(tokens, labels)
        return self.logits.mean(dim=(1, 2)), terms  # forgot to reduce


class AllowMethodConfig(TinyConfig):
    model_config = ConfigDict(extra="allow")


class LooseConfigMethod(TinyMethod):
    Config = AllowMethodConfig


@pytest.mark.parametrize("context", [COND, UNCOND], ids=["conditional", "unconditional"])
def test_method_conforming_passes(context):
    m = check_method(TinyMethod, context=context)
    assert isinstance(m, TinyMethod)


@pytest.mark.parametrize(
    "cls, message",
    [
        (GlobalRNGMethod, "not deterministic for fixed seeds.*global RNG"),
        (FirstSeedMethod, "depends on batch composition"),
        (OutOfRangeMethod, r"sampled tokens outside \[0, 8\)"),
        (Int32Method, "must return long tokens"),
        (DetachedLossMethod, "loss does not require grad"),
        (VectorLossMethod, "loss must be a finite scalar"),
        (LooseConfigMethod, "AllowMethodConfig: unknown fields are silently accepted"),
    ],
    ids=["global-rng", "batch-seeded", "out-of-range", "int32", "detached-loss", "vector-loss", "loose-config"],
)
@pytest.mark.parametrize("context", [COND, UNCOND], ids=["conditional", "unconditional"])
def test_method_broken(cls, message, context):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, context=context)


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------


class LevelTokenizer(Tokenizer):
    """4x4 patch means quantised to ``k`` levels in [-1, 1]; decode paints the level back."""

    def __init__(self, config=None, *, channels=1, resolution=16, k=4):
        super().__init__()
        self.codebook_size, self.patch = k, 4
        self.levels = nn.Parameter(torch.linspace(-1, 1, k))

    def encode(self, images):
        m = nn.functional.avg_pool2d(images.mean(1, keepdim=True), self.patch)[:, 0]  # "b h w"
        return (m[..., None] - self.levels).abs().argmin(-1)

    def decode(self, tokens):
        img = self.levels[tokens][:, None]
        return nn.functional.interpolate(img, scale_factor=self.patch, mode="nearest")

    def codebook(self):
        return self.levels[:, None].detach()

    def token_grid(self, height, width):
        return height // self.patch, width // self.patch

    def training_loss(self, images):
        loss = (self.decode(self.encode(images)) - images.mean(1, keepdim=True)).pow(2).mean()
        return loss, {"mse": loss.detach()}


class ShiftedIdsTokenizer(LevelTokenizer):
    def encode(self, images):
        return super().encode(images) + self.codebook_size  # forgot to subtract an offset


class OvershootTokenizer(LevelTokenizer):
    def decode(self, tokens):
        return super().decode(tokens) + 1  # [0, 2] instead of [-1, 1]


class FloatIdsTokenizer(LevelTokenizer):
    def encode(self, images):
        return super().encode(images).float()


class RandomEncodeTokenizer(LevelTokenizer):
    def encode(self, images):
        return torch.randint(0, self.codebook_size, super().encode(images).shape)


def test_tokenizer_conforming_passes():
    check_tokenizer(LevelTokenizer(), channels=1, resolution=16)


@pytest.mark.parametrize(
    "cls, message",
    [
        (ShiftedIdsTokenizer, r"token ids outside \[0, codebook_size\)"),
        (OvershootTokenizer, r"decoded images must lie in \[-1, 1\]"),
        (FloatIdsTokenizer, "encode must give long"),
        (RandomEncodeTokenizer, "encode is not deterministic in eval mode"),
    ],
    ids=["ids-out-of-range", "decode-range", "float-ids", "random-encode"],
)
def test_tokenizer_broken(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_tokenizer(cls(), channels=1, resolution=16)


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------


class NormalizedEmbedding(EmbeddingStrategy):
    def __init__(self, config=None, *, codebook_size=10, dim=4):
        super().__init__()
        self.dim = dim
        self.table = nn.Parameter(torch.randn(codebook_size, dim) * 3)

    def weight(self):
        return nn.functional.normalize(self.table, dim=-1)

    def forward(self, tokens):
        return self.weight()[tokens]


class RawLookupEmbedding(NormalizedEmbedding):
    def forward(self, tokens):
        return self.table[tokens]  # skips the normalisation weight() applies


class PooledEmbedding(NormalizedEmbedding):
    def forward(self, tokens):
        return super().forward(tokens).mean(1)


def test_embedding_conforming_passes():
    check_embedding(NormalizedEmbedding(codebook_size=10), 10)


def test_builtin_embeddings_conform():
    from dlbench.plugins import get_registry

    reg = get_registry()
    for name in ("learnable", "one-hot"):
        check_embedding(reg.get("embedding", name).build(codebook_size=12, tokenizer=None), 12)


@pytest.mark.parametrize(
    "emb, codebook_size, message",
    [
        (RawLookupEmbedding(codebook_size=10), 10, r"embedding\(ids\) must equal weight\(\)\[ids\]"),
        (PooledEmbedding(codebook_size=10), 10, "must be 'b n d'"),
        (NormalizedEmbedding(codebook_size=10), 9, r"weight\(\) must be \(codebook_size, dim\)"),
    ],
    ids=["forward-not-lookup", "pooled", "wrong-table-size"],
)
def test_embedding_broken(emb, codebook_size, message):
    with pytest.raises(AssertionError, match=message):
        check_embedding(emb, codebook_size)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


class TinyDataset(ImageDataset):
    channels, resolution, num_classes = 1, 8, 2

    def __init__(self, config=None):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = [i % 2 for i in range(6)]

    def item(self, i):
        return self.images[i], self.labels[i]

    def split(self, name):
        ds = self

        class _Split(torch.utils.data.Dataset):
            def __len__(self):
                return len(ds.images)

            def __getitem__(self, i):
                return ds.item(i)

        return _Split()

    def fingerprint(self, name):
        import hashlib

        return hashlib.sha256(self.images.numpy().tobytes() + name.encode()).hexdigest()


class FloatImages(TinyDataset):
    def item(self, i):
        img, y = super().item(i)
        return img.float() / 255, y


class NumpyImages(TinyDataset):
    def item(self, i):
        img, y = super().item(i)
        return img.numpy(), y


class WrongResolution(TinyDataset):
    def item(self, i):
        img, y = super().item(i)
        return img[:, :4, :4], y


class LabelOutOfRange(TinyDataset):
    def item(self, i):
        img, y = super().item(i)
        return img, y + 1  # 1-based labels: 2 == num_classes


class UnstableFingerprint(TinyDataset):
    _calls = itertools.count()

    def fingerprint(self, name):
        return f"{next(self._calls):x}"


def test_dataset_conforming_passes():
    check_dataset(TinyDataset())


@pytest.mark.parametrize(
    "cls, message",
    [
        (FloatImages, r"expected uint8 \(1, 8, 8\), got torch.float32"),
        (NumpyImages, "must be a uint8 torch.Tensor.*ndarray"),
        (WrongResolution, r"expected uint8 \(1, 8, 8\).*\(1, 4, 4\)"),
        (LabelOutOfRange, r"label 2 outside \[0, 2\)"),
        (UnstableFingerprint, "fingerprint must be a stable string"),
    ],
    ids=["float-images", "numpy-images", "resolution", "label", "fingerprint"],
)
def test_dataset_broken(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_dataset(cls())


# ---------------------------------------------------------------------------------------------
# feature extractors
# ---------------------------------------------------------------------------------------------


class ChannelStats(FeatureExtractor):
    """Per-channel mean and std of each image: features of one image only."""

    dim = 6

    def features(self, images):
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


class BatchCentred(ChannelStats):
    def features(self, images):
        f = super().features(images)
        return f - f.mean(0, keepdim=True)  # centres on the batch: a batch of one gives zeros


class WrongDim(ChannelStats):
    dim = 5


class NaNFeatures(ChannelStats):
    def features(self, images):
        return super().features(images) / 0 * 0


def test_feature_extractor_conforming_passes():
    check_feature_extractor(ChannelStats())


@pytest.mark.parametrize(
    "ext, message",
    [
        (BatchCentred(), "features depend on the batch"),
        (WrongDim(), r"features must be \(b, 5\); got \(3, 6\)"),
        (NaNFeatures(), "features are not finite"),
    ],
    ids=["batch-centred", "wrong-dim", "nan"],
)
def test_feature_extractor_broken(ext, message):
    with pytest.raises(AssertionError, match=message):
        check_feature_extractor(ext)
