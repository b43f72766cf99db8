"""The third-party example plugin (docs/examples/dlbench-example): it conforms, its unigram method learns
per-position marginals, and pip turns it into a distribution whose entry point dlbench discovers."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlbench import plugins
from dlbench.interfaces import MethodContext
from dlbench.seeding import PerSampleRNG, sample_seeds
from dlbench.testing import check_method, check_schedule

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dlbench-example"


@pytest.fixture(scope="module")
def example():
    """The example's plugin module, imported from its source tree."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from dlbench_example import plugin
    finally:
        sys.path.remove(str(EXAMPLE))
    return plugin


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        MethodContext(codebook_size=8, token_grid=(2, 3), num_classes=3),
        MethodContext(codebook_size=8, token_grid=(2, 3), num_classes=None),
        MethodContext(codebook_size=5, token_grid=(4, 4), num_classes=10),
    ],
    ids=["conditional", "unconditional", "conditional-4x4"],
)
def test_unigram_conforms(example, context):
    check_method(example.Unigram, context=context)


@pytest.mark.parametrize("params", [{}, {"power": 0.5}, {"power": 1.0, "logsnr_max": 5.0}, {"power": 3.0}])
def test_power_logsnr_conforms(example, params):
    check_schedule(example.PowerLogSNR(example.PowerLogSNR.Config(**params)))


@pytest.mark.parametrize("power", [0.5, 2.0])
def test_power_logsnr_closed_form(example, power):
    """sigma^2 = t^power away from the clip, and lambda(0) = -lambda(1) = logsnr_max at the ends."""
    s = example.PowerLogSNR(example.PowerLogSNR.Config(power=power, logsnr_max=8.0))
    t = torch.linspace(0.2, 0.8, 7, dtype=torch.float64)
    _, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(sigma**2, t**power, rtol=1e-10, atol=1e-12)
    ends = s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([8.0, -8.0], dtype=torch.float64), rtol=0, atol=1e-9)


def test_power_logsnr_rejects_non_positive_logsnr_max(example):
    with pytest.raises(ValueError, match="logsnr_max"):
        example.PowerLogSNR.Config(logsnr_max=0.0)


# ---------------------------------------------------------------------------------------------
# the unigram mechanism
# ---------------------------------------------------------------------------------------------


K, GRID, CLASSES = 6, (2, 3), 2


@pytest.fixture(scope="module")
def trained(example):
    """Unigram fitted by Adam on tokens whose position 0 is always token 3, the rest uniform."""
    torch.manual_seed(0)
    n = 256
    tokens = torch.randint(0, K, (n, *GRID))
    tokens[:, 0, 0] = 3
    labels = torch.randint(0, CLASSES, (n,))
    m = example.Unigram(example.Unigram.Config(), context=MethodContext(K, GRID, num_classes=CLASSES))
    opt = torch.optim.Adam(m.parameters(), lr=0.5)
    for _ in range(50):
        loss, _ = m.loss(tokens, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), tokens, labels


def test_unigram_learns_the_deterministic_position(trained):
    m, tokens, _ = trained
    seeds = sample_seeds(0, range(256))
    for labels in (torch.arange(256) % CLASSES, None):
        out = m.sample(labels, seeds, num_samples=256)
        assert out.shape == (256, *GRID) and out.dtype == torch.long
        assert (out[:, 0, 0] == 3).all()
        # the other positions stay spread over the codebook, not collapsed onto token 3
        assert len(out[:, 1:].unique()) == K and (out[:, 1:] == 3).float().mean() < 0.4
    probs = torch.softmax(m.logits.detach(), -1)  # "rows n k"
    assert (probs[:, 0, 3] > 0.999).all()


def test_unigram_matches_empirical_marginals(trained):
    """Maximum likelihood of independent categoricals = empirical frequencies (unconditional row)."""
    m, tokens, _ = trained
    freq = torch.nn.functional.one_hot(tokens.reshape(len(tokens), -1), K).float().mean(0)  # "n k"
    probs = torch.softmax(m.logits.detach()[-1], -1)
    torch.testing.assert_close(probs[1:], freq[1:], atol=0.01, rtol=0)


def test_unigram_guidance(trained):
    """guidance=1 is plain conditional sampling; guidance=0 is unconditional sampling (same seeds)."""
    m, _, _ = trained
    seeds = sample_seeds(1, range(64))
    labels = torch.arange(64) % CLASSES
    plain = m.sample(labels, seeds)
    torch.testing.assert_close(m.sample(labels, seeds, guidance=1.0), plain, rtol=0, atol=0)
    # reference: Gumbel-max on the conditional rows, drawn from the same per-sample streams
    logp = torch.log_softmax(m.logits.detach()[labels], -1)
    ref = (logp + PerSampleRNG(seeds).gumbel(*logp.shape[1:])).argmax(-1).reshape(64, *GRID)
    torch.testing.assert_close(plain, ref, rtol=0, atol=0)
    torch.testing.assert_close(m.sample(labels, seeds, guidance=0.0), m.sample(None, seeds), rtol=0, atol=0)


def test_unigram_rejects_bad_labels_and_options(trained):
    m, _, _ = trained
    seeds = sample_seeds(0, range(2))
    with pytest.raises(ValueError, match=r"labels must be 2 class ids in \[0, 2\)"):
        m.sample(torch.tensor([0, 2]), seeds)
    with pytest.raises(ValueError, match="unknown sampling options"):
        m.sample(None, seeds, top_r=0.9)
    # -1 (unlabelled) means the unconditional row
    torch.testing.assert_close(m.sample(torch.tensor([-1, -1]), seeds), m.sample(None, seeds), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# a real pip install
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_example_modules():
    """Forget (then restore) imported dlbench_example modules so the installed copy is the one loaded."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "dlbench_example"}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.split(".")[0] == "dlbench_example"]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_pip_install_registers_entry_point(tmp_path, monkeypatch, fresh_example_modules):
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    infos = list(site.glob("dlbench_example-*.dist-info"))
    assert len(infos) == 1, infos
    eps = configparser.ConfigParser()
    eps.read(infos[0] / "entry_points.txt")
    assert dict(eps["dlbench"]) == {"example": "dlbench_example.plugin"}

    monkeypatch.syspath_prepend(str(site))
    plugins.reset_manager()
    manager = plugins.get_manager()
    info = manager.plugins["example"]
    assert info.ok, info.error
    assert (info.distribution, info.version) == ("dlbench-example", "0.1.0")
    assert "method/unigram" in info.components and "schedule/power-logsnr" in info.components
    assert "unigram" in manager.registry.names("method")
    # the installed copy, not the source tree, was imported
    assert Path(sys.modules["dlbench_example.plugin"].__file__).is_relative_to(site)


# ---------------------------------------------------------------------------------------------
# its components inside the built-in methods, selected by name on the command line only
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example installed by pip into its own site directory (its entry point is how dlbench finds it)."""
    tmp = tmp_path_factory.mktemp("example-site")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def _dlbench(site: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    root = EXAMPLE.parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(site), str(root), str(root / "plugins")])}
    return subprocess.run([sys.executable, "-m", "dlbench", *args], capture_output=True, text=True, env=env,
                          timeout=600)


#: the quick preset, cut further (a few steps, no evaluation): what is tested is which components run
_SMALL = ["--preset", "quick", "--set", "tokenizer.training.steps=4", "--set", "training.steps=3",
          "--set", "sampling.num_samples=4", "--set", "evaluation.enabled=false"]


def _run_dir(out: Path, method: str) -> Path:
    (run,) = out.glob(f"{method}/*/*")
    return run


def test_plugin_schedules_run_inside_the_builtin_methods_by_name(installed_example, tmp_path):
    """Issue 17's done-when: VQ-LCMD with the plugin's continuous `power-logsnr` and VQ-Diffusion with its
    discrete `cosine-mask` (and its tokenizer regularizer `code-balance`), chosen only by --set."""
    import json

    out = tmp_path / "runs"
    proc = _dlbench(installed_example, "run", "vqlcmd", *_SMALL, "--set", "method.schedule=power-logsnr",
                    "--set", "method.schedule.params.power=1.5", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = _run_dir(out, "vqlcmd")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"]["params"]["schedule"] == {"name": "power-logsnr", "params": {"power": 1.5, "logsnr_max": 10.0}}
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    assert json.loads((run / "meta.json").read_text())["plugins"]["example"]["distribution"] == "dlbench-example"

    proc = _dlbench(installed_example, "run", "vq-diffusion", *_SMALL, "--set", "method.schedule=cosine-mask",
                    "--set", 'tokenizer.regularizers=["code-balance"]', "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = _run_dir(out, "vq-diffusion")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"]["params"]["schedule"]["name"] == "cosine-mask"
    assert cfg["tokenizer"]["regularizers"] == [{"name": "code-balance", "params": {"weight": 0.05, "temperature": 1.0}}]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    (tok,) = [e for e in events if e["event"] == "tokenizer"]  # trained now or reused from the cache
    folder = Path(tok["path"])
    info = json.loads((folder / "info.json").read_text())
    assert info["regularizers"] == cfg["tokenizer"]["regularizers"]
    # the regularizer's own parameter (its learned logit scale) trained with the tokenizer and was saved with it
    state = torch.load(folder / "tokenizer.pt", weights_only=True)
    assert [k for k in state if k.endswith("log_scale")] == ["_regularizer_modules.0.log_scale"]
    trained_steps = [e for e in events if e["event"] == "tokenizer_train"]
    assert not trained_steps or all("code-balance" in e for e in trained_steps)  # its term is logged
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"


def test_a_discrete_schedule_in_vqlcmd_is_refused_before_training(installed_example, tmp_path):
    out = tmp_path / "runs"
    proc = _dlbench(installed_example, "run", "vqlcmd", *_SMALL, "--set", "method.schedule=cosine-mask",
                    "--out", str(out))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines == ["error: method.params.schedule: schedule/cosine-mask does not fit here: it is a discrete "
                     "schedule; this slot takes a continuous schedule (one of: cosine, linear, power-logsnr, "
                     "shifted-cosine)"], lines
    assert not out.exists()  # nothing was trained or written
