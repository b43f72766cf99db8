"""Fault injection: the eight reliability rules of docs/reliability.md, each tried on many inputs.

Every case asserts the exit code, a one-line message naming the problem (no traceback), and that no
earlier result changed (a sha256 snapshot of the files before and after). CLI cases run in-process
through ``dlbench.cli.main``; signals use real subprocesses. One tiny run is trained per module and
copied for the cases that need a run directory.

One long module on purpose: the cases share that one trained run (a module fixture); split over files,
the suite would train it once per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbench.cli import main

ROOT = Path(__file__).resolve().parents[1]

# the smallest run that exercises every stage (the quick protocol's domain metrics on 8 samples; the
# domain classifier of the quick preset's data is trained once per cache and shared with other tests)
TINY = [
    "--preset", "quick", "--device", "cpu",
    "--set", "tokenizer.params.channels=8", "--set", "tokenizer.params.code_dim=4",
    "--set", "tokenizer.params.codebook_size=16",
    "--set", "tokenizer.training.steps=4", "--set", "tokenizer.training.batch_size=8",
    "--set", "tokenizer.training.checkpoint_every=4", "--set", "tokenizer.training.log_every=2",
    "--set", "training.steps=4", "--set", "training.batch_size=8", "--set", "training.checkpoint_every=2",
    "--set", "training.log_every=2", "--set", "training.warmup_steps=1", "--set", "training.diagnostics_every=2",
    "--set", "backbone.width=32", "--set", "backbone.depth=1", "--set", "backbone.heads=2",
    "--set", "sampling.num_samples=8", "--set", "sampling.batch_size=8", "--set", "sampling.steps=2",
    "--set", "evaluation.overrides.num_generated=8",
]
METHOD = "vqlcmd"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    """``dlbench ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return rc, out.out, out.err


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (the "no earlier result changed" check)."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(err: str, *needles: str) -> str:
    """The single ``error:`` line of ``err`` (no traceback), containing every needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or ln.startswith("Error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


class Evil:
    """Unpickling this creates the marker file (what an attacker's payload would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path, torch_format: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        torch.save({"weights": torch.zeros(2), "payload": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"payload": Evil(marker)}))
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One tiny finished run (trained once per module; tests work on copies)."""
    from dlbench import plugins
    from dlbench.cli import main as _main

    out = tmp_path_factory.mktemp("base-runs")
    try:
        _main(["run", METHOD, *TINY, "--out", str(out)])
    except SystemExit as exc:  # pragma: no cover - only on failure
        assert exc.code in (0, None), exc
    plugins.reset_manager()
    (run,) = [p.parent for p in out.rglob("config.json")]
    return run


@pytest.fixture
def run_copy(base_run, tmp_path):
    dst = tmp_path / "runs" / base_run.name
    shutil.copytree(base_run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _steps(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step-*"))


# =============================================================================================
# Rule 1: no file dlbench reads -- or a library reads for it -- can run code
# =============================================================================================


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("target", ["model.pt", "ema.pt", "optimizer.pt"])
def test_rule1_checkpoint_files_never_unpickle_code(run_copy, tmp_path, capsys, target, torch_format):
    marker = tmp_path / "MARKER"
    for step in _steps(run_copy):  # every checkpoint poisoned: nothing intact to fall back to
        plant_pickle(step / target, marker, torch_format)
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "sample", run_copy, "--n", "2")
    assert rc == 2 and not marker.exists()
    one_error_line(err, target, "could run code")
    assert snapshot(run_copy) == before


def test_rule1_samples_npz_with_pickled_objects(run_copy, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    np.savez(run_copy / "samples.npz", images=np.array([Evil(marker)], dtype=object))
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "eval", run_copy)
    assert rc == 2 and not marker.exists()
    one_error_line(err, "samples.npz", "could run code")
    assert snapshot(run_copy) == before


def test_rule1_tokenizer_cache_weights_and_tokens(run_copy, tmp_path, capsys, monkeypatch):
    from dlbench.eval.inception import cache_dir

    key = json.loads((run_copy / "metrics.json").read_text())["tokenizer"]["key"]
    src = cache_dir() / "tokenizers" / key
    cache = tmp_path / "cache"
    shutil.copytree(src, cache / "tokenizers" / key)
    monkeypatch.setenv("DLBENCH_CACHE", str(cache))
    marker = tmp_path / "MARKER"
    plant_pickle(cache / "tokenizers" / key / "tokenizer.pt", marker)
    rc, _, err = cli(capsys, "sample", run_copy, "--n", "2")
    assert rc == 2 and not marker.exists()
    one_error_line(err, "tokenizer.pt", "cached tokenizer weights")
    # the cached tokens, read by a resumed run
    shutil.copy(src / "tokenizer.pt", cache / "tokenizers" / key / "tokenizer.pt")
    from dlbench.safeload import UnsafeFileError, torch_load

    for tok in (cache / "tokenizers" / key).glob("tokens-*.pt"):
        plant_pickle(tok, marker)
        with pytest.raises(UnsafeFileError, match=tok.name):
            torch_load(tok, what="cached tokens")
    assert not marker.exists()


def test_rule1_domain_classifier_cache_and_extractor(tmp_path):
    from dlbench.eval.domain import DomainClassifierExtractor
    from dlbench.safeload import UnsafeFileError

    marker = tmp_path / "MARKER"
    path = plant_pickle(tmp_path / "domain" / "classifier-abc.pt", marker)
    with pytest.raises(UnsafeFileError, match="classifier-abc.pt"):
        DomainClassifierExtractor(DomainClassifierExtractor.Config(checkpoint=str(path)))
    assert not marker.exists()


def test_rule1_inception_weights_explicit_and_converted_with_forged_sidecar(tmp_path, monkeypatch):
    from dlbench.eval import inception
    from dlbench.safeload import UnsafeFileError

    marker = tmp_path / "MARKER"
    evil = plant_pickle(tmp_path / "weights.pth", marker)
    monkeypatch.setenv("DLBENCH_INCEPTION_WEIGHTS", str(evil))
    with pytest.raises(UnsafeFileError, match="weights.pth"):
        inception.resolve_inception_weights()
    monkeypatch.delenv("DLBENCH_INCEPTION_WEIGHTS")
    # the converted file in the cache, with a sidecar that vouches for it (the sidecar is not trusted)
    if inception.torch_fidelity_cache_path().is_file() or inception.fid_helper_torchscript_path() is None:
        pytest.skip("the converted-weights path is not the one resolved here")
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "cache"))
    out = plant_pickle(tmp_path / "cache" / "weights" / inception.CONVERTED_NAME, marker)
    out.with_suffix(".json").write_text(json.dumps({"converted_sha256": inception.sha256_file(out),
                                                    "source_sha256": "0" * 64}))
    with pytest.raises(UnsafeFileError, match=inception.CONVERTED_NAME):
        inception.resolve_inception_weights()
    assert not marker.exists()


def test_rule1_library_loads_are_forced_weights_only(tmp_path):
    """torch-fidelity calls torch.load(weights_only=False) on its cache and weights: inside dlbench's
    guard that call cannot unpickle code (the torch-fidelity cache and Inception-weights paths)."""
    from dlbench.safeload import UnsafeFileError, forced_weights_only

    marker = tmp_path / "MARKER"
    evil = plant_pickle(tmp_path / "torch-fidelity" / "dlbench-ref-x-inception-v3-compat-features-2048.pt", marker)
    from torch_fidelity import utils as tf_utils

    with forced_weights_only("torch-fidelity cache"), pytest.raises(UnsafeFileError, match=evil.name):
        tf_utils.cache_lookup_one_recompute_on_miss(
            evil.name[: -len(".pt")], lambda: {}, cache=True, cache_root=str(evil.parent), verbose=False)
    with forced_weights_only("Inception weights"), pytest.raises(UnsafeFileError, match="weights.pth"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                    feature_extractor_weights_path=str(plant_pickle(tmp_path / "weights.pth", marker)))
    assert not marker.exists()
    assert torch.load.__name__ != "guarded"  # the guard is removed afterwards


def test_rule1_torch_fidelity_reference_cache_end_to_end(tmp_path, monkeypatch):
    """A poisoned reference-feature cache of the torch-fidelity backend, loaded during evaluation
    (dlbench caches the features as .npz; torch-fidelity's own pickle cache is no longer used)."""
    from dlbench.eval.backends import torch_fidelity_metrics
    from dlbench.eval.inception import resolve_inception_weights
    from dlbench.eval.protocol import resolve_protocol
    from dlbench.eval.inception import InceptionWeightsError
    from dlbench.safeload import UnsafeFileError

    try:
        weights = resolve_inception_weights()
    except InceptionWeightsError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DLBENCH_CACHE", str(cache))
    proto = resolve_protocol("quick", inception_metrics=("fid",), num_generated=8, num_reference=8, domain_metrics=False)
    g = torch.Generator().manual_seed(0)
    gen = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    ref = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    first, _ = torch_fidelity_metrics(gen, ref, proto, weights, reference_cache_name="dlbench-ref-test")
    cached = sorted((cache / "features").glob("dlbench-ref-test*.npz"))
    assert cached and np.isfinite(first["fid"])
    again, _ = torch_fidelity_metrics(gen, ref, proto, weights, reference_cache_name="dlbench-ref-test")
    assert again == first  # its genuine cache loads under the weights-only guard
    marker = tmp_path / "MARKER"
    for p in cached:
        np.savez(p, **{"2048": np.array([Evil(marker)], dtype=object)})
    with pytest.raises(UnsafeFileError, match="dlbench-ref-test"):
        torch_fidelity_metrics(gen, ref, proto, weights, reference_cache_name="dlbench-ref-test")
    assert not marker.exists()


def test_rule1_clean_fid_feature_cache(tmp_path, monkeypatch):
    from dlbench.safeload import UnsafeFileError, np_load

    marker = tmp_path / "MARKER"
    path = tmp_path / "clean-fid" / "dlbench-ref-x.npz"
    path.parent.mkdir()
    np.savez(path, feats=np.array([Evil(marker)], dtype=object))
    with pytest.raises(UnsafeFileError, match="dlbench-ref-x.npz"):
        np_load(path, what="clean-fid reference features")
    assert not marker.exists()


def test_rule1_user_config_file_yaml_python_tag(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"training: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, _, err = cli(capsys, "run", METHOD, "--config", cfg, "--dry-run")
    assert rc == 2 and not marker.exists()
    one_error_line(err, "evil.yaml", "cannot parse")


def test_rule1_dataset_pickles_cifar_and_mnist(tmp_path):
    """CIFAR batches and mnist.pkl.gz are pickles by format: read with an array-only unpickler."""
    import gzip

    from dlbench.data.errors import DatasetFormatError
    from dlbench.data.formats import load_array_pickle

    marker = tmp_path / "MARKER"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"payload": Evil(marker)}))
    with pytest.raises(DatasetFormatError, match="data_batch_1"):
        load_array_pickle(batch, what=str(batch))
    gz = tmp_path / "mnist.pkl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(pickle.dumps(Evil(marker)))
    with pytest.raises(DatasetFormatError, match="mnist.pkl.gz"):
        load_array_pickle(gz, what=str(gz))
    assert not marker.exists()


def test_rule1_torchscript_feature_network_must_be_the_published_file(tmp_path):
    from dlbench_regvq.features import FeatureNetworkUnavailable, InceptionEarly, InceptionEarlyConfig

    other = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), other)
    with pytest.raises(FeatureNetworkUnavailable, match="refusing to load another TorchScript"):
        InceptionEarly(InceptionEarlyConfig(weights_path=str(other)))


# =============================================================================================
# Rule 2: exit codes tell the truth
# =============================================================================================


def interruptible() -> None:
    """Popen ``preexec_fn``: SIGINT back to its default in the child. A test suite started in the background
    of a non-interactive shell (``pytest &``) has SIGINT ignored, and a child inherits that, so Python would
    never raise KeyboardInterrupt there and the Ctrl-C tests would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _dlbench_proc(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}", "COLUMNS": "300"}
    return subprocess.Popen([sys.executable, "-m", "dlbench", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)


def _wait_for(pred, proc, timeout=240.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_rule2_sigint_during_training_exits_130_with_resume_hint_then_resume_finishes(tmp_path, capsys):
    out = tmp_path / "runs"
    proc = _dlbench_proc("run", METHOD, *TINY, "--set", "training.steps=100000", "--out", str(out), cwd=tmp_path)
    ok = _wait_for(lambda: any(out.rglob("checkpoints/latest.json")), proc)
    assert ok, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (run,) = [p.parent for p in out.rglob("config.json")]
    assert "Traceback" not in err and f"resume with `dlbench run --resume {run}`" in err
    events = [json.loads(ln) for ln in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1] == {**events[-1], "event": "run_end", "status": "interrupted"}
    step = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    # rule 8: --resume alone continues the run under its own saved config (budget raised as an override)
    rc, _, err = cli(capsys, "run", "--resume", run, "--set", f"training.steps={step + 2}")
    assert rc == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["training"]["step"] == step + 2


def test_rule2_sigint_during_eval_exits_130(run_copy, tmp_path, monkeypatch):
    # make evaluation slow enough to interrupt: a sitecustomize that sleeps inside evaluate_samples
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time, dlbench.eval.api as a\n"
        "orig = a.evaluate_samples\n"
        "def slow(*x, **k):\n    open('" + str(tmp_path / "in-eval") + "', 'w').close(); time.sleep(60)\n"
        "a.evaluate_samples = slow\n")
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    before = snapshot(run_copy / "metrics.json")
    proc = subprocess.Popen([sys.executable, "-m", "dlbench", "eval", str(run_copy)], cwd=tmp_path, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)
    assert _wait_for(lambda: (tmp_path / "in-eval").exists(), proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert snapshot(run_copy / "metrics.json") == before
    assert not (run_copy / ".lock").exists()


def test_rule2_diverged_run_exits_1(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", METHOD, *TINY, "--set", "training.lr=1e30", "--set", "training.grad_clip=null",
                     "--out", tmp_path / "runs")
    assert rc == 1, err
    one_error_line(err, "run failed")
    (run,) = [p.parent for p in (tmp_path / "runs").rglob("config.json")]
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("assignment", [
    "training.lr=inf", "training.lr=nan", "training.grad_clip=inf", "sampling.guidance=nan",
    "training.budget_minutes=inf", "tokenizer.training.lr=-inf", "method.params.w_cm=nan",
])
def test_rule2_non_finite_values_refused_like_nan(tmp_path, capsys, assignment):
    rc, _, err = cli(capsys, "run", METHOD, "--preset", "quick", "--set", assignment, "--out", tmp_path / "runs")
    assert rc == 2
    one_error_line(err, assignment.split("=")[0].split(".")[-1], "finite")
    assert not (tmp_path / "runs").exists()


def test_rule2_success_and_help_exit_0(capsys):
    assert cli(capsys, "--help")[0] == 0
    rc, out, _ = cli(capsys, "list", "method", "--format", "json")
    assert rc == 0 and METHOD in out


# =============================================================================================
# Rule 3: a user mistake never prints a traceback; everything knowable fails before the run directory
# =============================================================================================


@pytest.mark.parametrize("args, needle", [
    ((), "Usage"),
    (("run",), "METHOD"),
    (("run", METHOD, "--bogus"), "No such option"),
    (("run", METHOD, "--seed", "abc"), "--seed"),
    (("run", METHOD, "--seed", str(2**64)), "--seed"),
    (("sample", ".", "--n", "0"), "--n"),
    (("sample", ".", "--steps", "0"), "--steps"),
    (("compare", METHOD, "--seeds", "0"), "--seeds"),
    (("frobnicate",), "No such command"),
    (("eval",), "RUN_DIR"),
])
def test_rule3_usage_errors_exit_2_with_usage(capsys, args, needle):
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert "Traceback" not in out + err
    assert "Usage" in out + err and needle.lower() in (out + err).lower()


@pytest.mark.parametrize("over, needle", [
    (["--set", "tokenizer.codebook_size=0"], "codebook_size"),
    (["--set", "backbone.depth=-1"], "depth"),
    (["--set", "backbone.heads=0"], "heads"),
    (["--set", "seed=18446744073709551616"], "seed"),
    (["--set", "sampling.seed=-1"], "sampling.seed"),
    (["--set", "training.batch_size=100000000"], "cannot be allocated"),
    (["--set", "tokenizer.training.batch_size=100000000"], "cannot be allocated"),
    (["--set", "dataset.max_images=1", "--set", "training.batch_size=1",
      "--set", "tokenizer.training.batch_size=1"], "at least 2 reference"),
    (["--set", "evaluation.overrides.kid_seed=4294967296"], "kid_seed"),
    (["--set", "training"], "KEY=VALUE"),
    (["--set", "nosuch.x=1"], "unknown section"),
    (["--preset", "huge"], "preset"),
    (["--device", "tpu"], "device"),
])
def test_rule3_bad_values_refused_by_run_and_dry_run_before_any_run_dir(tmp_path, capsys, over, needle):
    for extra in ([], ["--dry-run"]):  # --dry-run refuses what run refuses
        rc, _, err = cli(capsys, "run", METHOD, "--preset", "quick", *over, *extra, "--out", tmp_path / "runs")
        assert rc == 2, err
        one_error_line(err, needle)
        assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, suffix, needle", [
    ('{"method": "vqlcmd"}', ".json", "section 'method' must be a mapping"),
    ('{"training": [1, 2]}', ".json", "section 'training' must be a mapping"),
    ("[1, 2, 3]", ".json", "mapping at the top level"),
    (b"\xff\xfe{\x00}", ".json", "not UTF-8"),
    ("training = {steps = ", ".toml", "cannot parse"),
    ("dataset: fashion-mnist-small\n", ".yaml", "section 'dataset' must be a mapping"),
    ('{"training": {"lr": "fast"}}', ".json", "training.lr"),
])
def test_rule3_config_files_wrong_shape_or_encoding(tmp_path, capsys, content, suffix, needle):
    cfg = tmp_path / f"cfg{suffix}"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    for extra in ([], ["--dry-run"]):
        rc, _, err = cli(capsys, "run", METHOD, "--config", cfg, *extra, "--out", tmp_path / "runs")
        assert rc == 2
        one_error_line(err, needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["file", "file-in-path", "config-is-dir"])
def test_rule3_out_and_config_paths_that_are_not_what_they_should_be(tmp_path, capsys, kind):
    f = tmp_path / "afile"
    f.write_text("x")
    before = snapshot(tmp_path)
    if kind == "config-is-dir":
        rc, _, err = cli(capsys, "run", METHOD, "--preset", "quick", "--config", tmp_path, "--out", tmp_path / "r")
        one_error_line(err, "directory")
    else:
        target = f if kind == "file" else f / "runs"
        rc, _, err = cli(capsys, "run", METHOD, "--preset", "quick", "--out", target)
        one_error_line(err, "--out", str(target))
    assert rc == 2 and snapshot(tmp_path) == before


@pytest.mark.parametrize("budget", ["steps=nan", "steps=inf", "images=-5", "steps=1.5", "minutes=0", "hours=3"])
def test_rule3_compare_budget_validated(tmp_path, capsys, budget):
    rc, _, err = cli(capsys, "compare", METHOD, "--preset", "quick", "--budget", budget, "--out", tmp_path / "runs")
    assert rc == 2
    one_error_line(err, "--budget")
    assert not (tmp_path / "runs").exists()


def test_rule3_compare_shares_the_preflight(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, _, err = cli(capsys, "compare", METHOD, "--preset", "quick", "--out", f)
    assert rc == 2
    one_error_line(err, "--out", "is a file")


def test_rule3_component_names_used_as_paths_are_safe():
    from dlbench.preflight import PreflightError, check_path_segment

    for bad in ("..", ".", "a/b", "../../etc", ".hidden", "", "a b", "x\n"):
        with pytest.raises(PreflightError, match="safe directory name"):
            check_path_segment(bad, "method")
    assert check_path_segment("vq-diffusion", "method") == "vq-diffusion"


# =============================================================================================
# Rule 4: corrupt or partial files are survived, named, and never make things worse
# =============================================================================================


def _newest(run: Path) -> Path:
    return _steps(run)[-1]


@pytest.mark.parametrize("damage", ["zero-model", "truncated-model", "truncated-optimizer", "torn-state",
                                    "state-without-step", "missing-model"])
def test_rule4_damaged_newest_checkpoint_falls_back_to_older(run_copy, capsys, damage):
    from dlbench.train.checkpoint import load_latest_intact

    newest = _newest(run_copy)
    older = _steps(run_copy)[-2]
    f = {"zero-model": "model.pt", "truncated-model": "model.pt", "truncated-optimizer": "optimizer.pt",
         "torn-state": "state.json", "state-without-step": "state.json", "missing-model": "model.pt"}[damage]
    p = newest / f
    if damage.startswith("zero"):
        p.write_bytes(b"")
    elif damage.startswith("truncated"):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "torn-state":
        p.write_text('{"step": 4, "rng": [')
    elif damage == "state-without-step":
        p.write_text("{}")
    else:
        p.unlink()
    warnings: list[str] = []
    path, ck = load_latest_intact(run_copy / "checkpoints", warn=warnings.append)
    assert path == older and len(warnings) == 1 and f in warnings[0]
    before = snapshot(run_copy)
    rc, out, err = cli(capsys, "sample", run_copy, "--n", "2", "--output", run_copy.parent / "s")
    assert rc == 0 and "Traceback" not in err and "skipping damaged checkpoint" in err
    assert snapshot(run_copy) == before  # the damaged file is left for inspection, nothing else changed


def test_rule4_every_checkpoint_damaged_names_the_files(run_copy, capsys):
    for step in _steps(run_copy):
        (step / "model.pt").write_bytes(b"")
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "sample", run_copy, "--n", "2")
    assert rc == 2
    line = one_error_line(err, "no intact checkpoint")
    assert all(str(s / "model.pt") in line for s in _steps(run_copy))
    assert snapshot(run_copy) == before


def test_rule4_resume_falls_back_to_older_checkpoint(run_copy, capsys):
    newest = _newest(run_copy)
    (newest / "model.pt").write_bytes(b"")
    older_step = int(_steps(run_copy)[-2].name.split("-")[1])
    rc, _, err = cli(capsys, "run", "--resume", run_copy, "--set", "training.steps=6")
    assert rc == 0, err
    resumes = [json.loads(ln) for ln in (run_copy / "events.jsonl").read_text().splitlines() if '"train_resume"' in ln]
    assert resumes[-1]["step"] == older_step
    assert json.loads((run_copy / "metrics.json").read_text())["training"]["step"] == 6


@pytest.mark.parametrize("name, content", [
    ("config.json", '{"method": {"name": "vqlcmd"'),
    ("config.json", ""),
    ("config.json", b"\xff\xfe\x00"),
    ("samples.npz", b"PK\x03\x04 truncated"),
])
def test_rule4_corrupt_run_files_name_the_file(run_copy, capsys, name, content):
    p = run_copy / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "eval", run_copy)
    assert rc == 2
    one_error_line(err, str(p))
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("name", ["meta.json", "metrics.json", "protocol.json"])
def test_rule4_corrupt_json_in_compare_names_the_file(run_copy, capsys, name):
    (run_copy / name).write_text('{"torn": ')
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "compare", "--runs", run_copy)
    assert rc == 2
    one_error_line(err, str(run_copy / name), "not valid JSON")
    assert snapshot(run_copy) == before


def test_rule4_eval_keeps_fresh_metrics_when_old_metrics_json_is_corrupt(run_copy, capsys):
    (run_copy / "metrics.json").write_text('{"status": "ok", "metr')
    rc, out, err = cli(capsys, "eval", run_copy)
    assert rc == 0, err
    fresh = json.loads((run_copy / "metrics.json").read_text())
    assert "protocol_hash" in fresh
    aside = list(run_copy.glob("metrics.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"status": "ok", "metr'
    assert "moved it to" in err


def test_rule4_torn_events_line_does_not_swallow_the_next(tmp_path):
    from dlbench.runs import RunDir

    rd = RunDir(tmp_path)
    rd.event("a", x=1)
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"event": "torn", "x"')  # a crash mid-line
    rd.event("b", x=2)
    assert [e["event"] for e in rd.events()] == ["a", "b"]


def test_rule4_temp_files_left_by_a_kill_are_cleaned_on_next_start(run_copy, capsys):
    pid = dead_pid()
    stale = [run_copy / f".metrics.json.{pid}.abcd1234.tmp", run_copy / "checkpoints" / f".step-00000006.{pid}.zz99yy88"]
    stale[0].write_text("partial")
    stale[1].mkdir()
    (stale[1] / "model.pt").write_bytes(b"partial")
    alive = run_copy / f".meta.json.{os.getpid()}.abcd1234.tmp"  # a live writer's temp file stays
    alive.write_text("in progress")
    rc, _, err = cli(capsys, "eval", run_copy)
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and alive.exists()


def test_rule4_cache_temps_of_dead_writers_cleaned_when_old(tmp_path):
    from dlbench.fsutil import clean_cache_temps

    pid = dead_pid()
    old = tmp_path / "domain" / f"classifier-abc.tmp{pid}"
    young = tmp_path / "clean-fid" / f"ref.tmp{pid}.npz"
    for p in (old, young):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    removed = clean_cache_temps(tmp_path, min_age_s=3600)
    assert removed == [old] and young.exists()


@pytest.mark.parametrize("where", ["json", "checkpoint", "event"])
def test_rule4_disk_full_says_so_and_where(tmp_path, monkeypatch, where):
    import errno

    from dlbench.fsutil import DiskFullError
    from dlbench.runs import RunDir, atomic_write_json
    from dlbench.train.checkpoint import save_checkpoint

    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')
    (tmp_path / "events.jsonl").write_text('{"event": "a"}\n')
    before = snapshot(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "json":
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(DiskFullError, match=f"no space left on device while writing {target}"):
            atomic_write_json(target, {"new": True})
    elif where == "checkpoint":
        monkeypatch.setattr(torch, "save", full)
        with pytest.raises(DiskFullError, match="no space left on device while writing .*model.pt"):
            save_checkpoint(tmp_path / "checkpoints", step=1, model={}, optimizer={}, ema=None, state={})
        assert not any((tmp_path / "checkpoints").iterdir())  # no partial checkpoint left
    else:
        import dlbench.observe.loggers

        class FullFile:  # a file on a full disk: reads work, writes fail
            def __init__(self, fh):
                self.fh = fh

            def __getattr__(self, name):
                return getattr(self.fh, name)

            def write(self, data):
                full()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

        # events.jsonl is written by the always-on jsonl logger (dlbench.observe.loggers)
        monkeypatch.setattr(dlbench.observe.loggers, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
        with pytest.raises(DiskFullError, match="events.jsonl"):
            RunDir(tmp_path).event("b")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if "checkpoints" not in k} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rule4_disk_full_through_the_cli(run_copy, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(run_copy)
    monkeypatch.setattr(os, "fsync", full)
    rc, _, err = cli(capsys, "eval", run_copy)
    assert rc == 2
    one_error_line(err, "no space left on device", str(run_copy))
    monkeypatch.undo()
    assert {k: v for k, v in snapshot(run_copy).items() if not k.endswith("events.jsonl")} == \
        {k: v for k, v in before.items() if not k.endswith("events.jsonl")}


def test_rule4_torn_latest_pointer_falls_back_to_scan(run_copy):
    from dlbench.train.checkpoint import latest_checkpoint

    for text in ('{"step": 4, "pa', '{"path": "../../etc"}', "[]", "\xff"):
        (run_copy / "checkpoints" / "latest.json").write_text(text, errors="surrogateescape")
        assert latest_checkpoint(run_copy / "checkpoints") == _newest(run_copy)


# =============================================================================================
# Rule 5: datasets fail before training, not after
# =============================================================================================


def _images(folder: Path, n: int, start: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{start + i:04d}.png")


def _folder_args(data: Path, *extra: str) -> list[str]:
    return ["run", METHOD, *TINY, "--dataset", "folder", "--data-dir", str(data), "--set", "dataset.resolution=32",
            "--set", "dataset.max_images=64", *extra]


def test_rule5_flat_folder_says_what_to_pass_before_any_run_dir(tmp_path, capsys):
    _images(tmp_path / "data", 12)
    for dry in ([], ["--dry-run"]):
        rc, _, err = cli(capsys, *_folder_args(tmp_path / "data", *dry, "--out", str(tmp_path / "runs")))
        assert rc == 2
        one_error_line(err, "split 'test'", "evaluation.overrides.reference_split=train")
    assert not (tmp_path / "runs").exists()


def test_rule5_ffhq_default_protocol_has_no_test_split(tmp_path, capsys):
    _images(tmp_path / "ffhq", 4)
    rc, _, err = cli(capsys, "run", METHOD, "--preset", "quick", "--dataset", "ffhq", "--data-dir", tmp_path / "ffhq",
                     "--dry-run",
                     "--set", "dataset.resolution=32", "--out", tmp_path / "runs")
    assert rc == 2
    one_error_line(err, "no split 'test'", "reference_split=train")


@pytest.mark.parametrize("layout", ["empty", "missing", "is-file", "empty-train"])
def test_rule5_missing_or_empty_data_fails_in_preflight(tmp_path, capsys, layout):
    data = tmp_path / "data"
    if layout == "empty":
        data.mkdir()
    elif layout == "is-file":
        data.write_text("not a folder")
    elif layout == "empty-train":
        (data / "train").mkdir(parents=True)
        _images(data / "test", 4)
    rc, _, err = cli(capsys, *_folder_args(data, "--out", str(tmp_path / "runs")))
    assert rc == 2
    one_error_line(err, "folder")
    assert not (tmp_path / "runs").exists()


def test_rule5_symlink_cycles_and_duplicate_links_scanned_once(tmp_path):
    from dlbench.data.folder import list_images

    root = tmp_path / "data"
    _images(root / "a", 3)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # the same images again
    (root / "dangling").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    keys = list_images(root)
    assert keys == ["a/0000.png", "a/0001.png", "a/0002.png"]


def test_rule5_skip_bad_reports_the_count(tmp_path, capsys):
    data = tmp_path / "data"
    _images(data / "train", 10)
    _images(data / "test", 10, start=100)
    for i in range(3):
        (data / "train" / f"bad{i}.png").write_bytes(b"not a png")
    rc, _, err = cli(capsys, *_folder_args(data, "--skip-bad", "--set", "evaluation.enabled=false",
                                           "--out", str(tmp_path / "runs")))
    assert rc == 0, err
    (run,) = [p.parent for p in (tmp_path / "runs").rglob("config.json")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["skipped_images"] == 3 and metrics["data"]["skipped_by_split"]["train"] == 3
    assert "skipped 3 unreadable image(s)" in err
    ev = [json.loads(ln) for ln in (run / "events.jsonl").read_text().splitlines() if "data_skipped" in ln]
    assert ev and ev[0]["skipped_images"] == 3


# =============================================================================================
# Rule 6: plugins cannot silently replace built-ins
# =============================================================================================


def _tp_plugin(kind_hook: str, name: str):
    import types

    from dlbench import hookimpl

    mod = types.SimpleNamespace()

    def register(register):
        from dlbench.plugins import get_registry

        real = get_registry().get(kind_hook, "vqlcmd" if kind_hook == "method" else "vqvae")
        register(name, real.factory, config=real.config)

    setattr(mod, f"register_{kind_hook}s", hookimpl(register))
    return mod


@pytest.mark.parametrize("kind, name", [("method", "vqlcmd"), ("tokenizer", "vqvae")])
def test_rule6_builtin_names_cannot_be_taken(kind, name):
    from dlbench.plugins import PluginInfo, get_manager

    manager = get_manager()
    original = manager.registry.get(kind, name)
    info = manager.register_plugin(_tp_plugin(kind, name), "evil",
                                   info=PluginInfo("evil", distribution="evil-dist", version="6.6.6"))
    assert not info.ok
    assert "dlbench 0.1" in info.error and "evil-dist 6.6.6" in info.error and "registered twice" in info.error
    assert manager.registry.get(kind, name) is original


@pytest.mark.parametrize("bad", ["..", ".", "a/b", ".hidden", "with space", "../escape", "trailing\n"])
def test_rule6_component_names_must_be_safe_path_segments(bad):
    from dlbench.plugins import get_manager
    from dlbench.registry import InterfaceError

    real = get_manager().registry.get("method", METHOD)
    with pytest.raises(InterfaceError, match="directory name"):
        get_manager().registry.add("method", bad, real.factory, config=real.config)


def test_rule6_entry_point_named_like_a_builtin(tmp_path, monkeypatch, capsys):
    from plugin_helpers import add_to_path, make_distribution

    from dlbench.plugins import PluginManager

    root = make_distribution(tmp_path / "site", "evil-core", {"core": "tp_evilcore"},
                             {"tp_evilcore": "raise SystemExit('must never be imported')\n"}, version="9.9.9")
    add_to_path(monkeypatch, root)
    m = PluginManager()
    m.load_entrypoints()
    assert m.plugins["core"].ok and m.plugins["core"].distribution == "dlbench"
    clash = m.plugins["core@evil-core"]
    assert not clash.ok and "evil-core 9.9.9" in clash.error and "distribution dlbench" in clash.error
    monkeypatch.setenv("DLBENCH_STRICT_PLUGINS", "1")
    from dlbench import plugins

    plugins.reset_manager()
    rc, _, err = cli(capsys, "list", "method")
    assert rc == 2
    one_error_line(err, "evil-core", "dlbench")


def test_rule6_provenance_in_meta_and_compare(run_copy, capsys):
    meta = json.loads((run_copy / "meta.json").read_text())
    comps = meta["components"]
    assert comps[f"method/{METHOD}"]["distribution"] == "dlbench" and comps[f"method/{METHOD}"]["version"]
    assert {"tokenizer/vqvae", "dataset/fashion-mnist-small"} <= set(comps)
    rc, out, err = cli(capsys, "compare", "--runs", run_copy)
    assert rc == 0, err
    assert f"method/{METHOD} from dlbench" in out


# =============================================================================================
# Rule 7: statistics cannot be fooled
# =============================================================================================


def _fake_run(root: Path, name: str, seed: int, metrics: dict, method: str = METHOD) -> Path:
    from dlbench.runs import atomic_write_json

    run = root / name
    run.mkdir(parents=True)
    atomic_write_json(run / "config.json", {"method": {"name": method, "params": {}}, "seed": seed,
                                            "sampling": {"seed": 0}, "dataset": {"name": "d"}})
    atomic_write_json(run / "metrics.json", {"status": "ok", "protocol_hash": "p" * 16, "metrics": metrics,
                                             "compute": {"params": 10, "train_steps": 4, "nfe": 2}})
    atomic_write_json(run / "protocol.json", {"hash": "p" * 16})
    atomic_write_json(run / "meta.json", {"components": {f"method/{method}": {"distribution": "dlbench",
                                                                               "version": "0.1.0"}}})
    return run


@pytest.mark.parametrize("how", ["same-path", "dot-dot", "symlink", "trailing-slash"])
def test_rule7_same_run_twice_is_refused(tmp_path, capsys, how):
    a = _fake_run(tmp_path, "a", 0, {"fid": 1.0})
    other = {"same-path": a, "dot-dot": tmp_path / "a" / ".." / "a", "trailing-slash": Path(str(a) + "/")}.get(how)
    if how == "symlink":
        other = tmp_path / "link"
        other.symlink_to(a, target_is_directory=True)
    before = snapshot(a)
    for cmd in (["compare", "--runs", a, "--runs", other], ["report", a, other, "--html", tmp_path / "rep"]):
        rc, _, err = cli(capsys, *cmd)
        assert rc == 2
        one_error_line(err, "given twice")
    assert snapshot(a) == before and not (tmp_path / "rep").exists()


def test_rule7_same_training_seed_is_flagged(tmp_path, capsys):
    runs = [_fake_run(tmp_path, f"r{i}", seed, {"fid": 1.0 + i}) for i, seed in enumerate([0, 0, 1])]
    rc, out, _ = cli(capsys, "compare", "--runs", *runs)
    assert rc == 0
    assert "2 runs share training seed 0" in out and "not independent" in out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_rule7_non_finite_metric_shows_its_n(tmp_path, capsys, bad):
    runs = [_fake_run(tmp_path, "r0", 0, {"fid": 1.0, "kid": 0.1}), _fake_run(tmp_path, "r1", 1, {"fid": 2.0, "kid": 0.2}),
            _fake_run(tmp_path, "r2", 2, {"fid": bad, "kid": 0.3})]
    # json cannot hold nan/inf strictly; dlbench writes Python's NaN/Infinity tokens, which it reads back
    rc, out, _ = cli(capsys, "compare", "--runs", *runs, "--format", "json")
    assert rc == 0
    row = json.loads(out)["rows"][0]
    assert row["n_seeds"] == 3 and row["fid_n"] == 2 and row["kid_n"] == 3 and row["fid_per_seed"] == [1.0, 2.0]
    rc, out, _ = cli(capsys, "compare", "--runs", *runs)
    assert "(n=2)" in out and "fid is finite in 2 of 3 runs" in out


def test_rule7_metric_missing_everywhere_is_not_claimed(tmp_path, capsys):
    runs = [_fake_run(tmp_path, f"r{i}", i, {"fid": float("nan"), "kid": 0.1 * (i + 1)}) for i in range(2)]
    rc, out, _ = cli(capsys, "compare", "--runs", *runs, "--format", "json")
    row = json.loads(out)["rows"][0]
    assert rc == 0 and row["fid"] is None and row["fid_n"] == 0 and row["kid_n"] == 2


# =============================================================================================
# Rule 8: `dlbench run --resume RUN` continues RUN from its own saved config
# =============================================================================================


@pytest.mark.parametrize("extra, needle", [
    (["--set", "backbone.depth=3"], "backbone.params.depth"),
    (["vq-diffusion"], "method.name"),
    (["--preset", "paper"], "preset"),
    (["--seed", "5"], "seed"),
    (["--set", "tokenizer.params.codebook_size=32"], "tokenizer.params.codebook_size"),
    (["--dataset", "mnist"], "dataset.name"),
])
def test_rule8_resume_overrides_checked_for_compatibility(run_copy, capsys, extra, needle):
    before = snapshot(run_copy)
    rc, _, err = cli(capsys, "run", *extra, "--resume", run_copy)
    assert rc == 2
    one_error_line(err, "cannot resume", needle)
    assert snapshot(run_copy) == before


def test_rule8_resume_dry_run_shows_the_saved_config(run_copy, capsys):
    before = snapshot(run_copy)
    rc, out, err = cli(capsys, "run", "--resume", run_copy, "--dry-run", "--set", "training.steps=8")
    assert rc == 0, err
    cfg = json.loads(out)
    saved = json.loads((run_copy / "config.json").read_text())
    assert cfg["backbone"] == saved["backbone"] and cfg["training"]["steps"] == 8 and cfg["preset"] == "quick"
    assert snapshot(run_copy) == before


def test_rule8_resume_same_method_name_and_device_are_fine(run_copy, capsys):
    rc, out, err = cli(capsys, "run", METHOD, "--resume", run_copy, "--device", "cpu", "--dry-run")
    assert rc == 0, err


@pytest.mark.parametrize("damage", ["not-a-run", "corrupt-config"])
def test_rule8_resume_of_a_non_run_or_damaged_run(run_copy, tmp_path, capsys, damage):
    target = tmp_path / "empty" if damage == "not-a-run" else run_copy
    if damage == "not-a-run":
        target.mkdir()
    else:
        (run_copy / "config.json").write_text("{")
    before = snapshot(target)
    rc, _, err = cli(capsys, "run", "--resume", target)
    assert rc == 2
    one_error_line(err, str(target))
    assert snapshot(target) == before
