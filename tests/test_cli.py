"""The CLI as a user meets it: one-line errors with exit code 2, listings, dry runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dlbench(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlbench", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd or ROOT, timeout=300)


def test_unknown_method_exits_2_with_did_you_mean():
    r = dlbench("run", "vqlcdm", "--preset", "quick")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown method 'vqlcdm'" in err[0] and "Did you mean 'vqlcmd'" in err[0]
    assert "Traceback" not in r.stderr


def test_bad_set_value_names_field_value_and_reason():
    r = dlbench("run", "vq-diffusion", "--preset", "quick", "--set", "training.lr=abc")
    assert r.returncode == 2
    assert "training.lr = 'abc': Input should be a valid number" in r.stderr and "Traceback" not in r.stderr


def test_list_and_plugins_json():
    r = dlbench("list", "--format", "json")
    assert r.returncode == 0, r.stderr
    names = {c["canonical"]: c["plugin"] for c in json.loads(r.stdout)}
    for canonical, plugin in {"method/vqlcmd": "vqlcmd", "method/vq-diffusion": "vqdiffusion", "method/regvq": "regvq",
                              "schedule/shifted-cosine": "core", "dataset/fashion-mnist-small": "core",
                              "tokenizer/vqvae": "core"}.items():
        assert names.get(canonical) == plugin, canonical
    r = dlbench("plugins", "--format", "json")
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    assert {"core", "vqlcmd", "vqdiffusion", "regvq"} <= set(plugins)
    assert all(p["error"] is None for p in plugins.values())
    assert plugins["core"]["distribution"] == "dlbench"


def test_list_unknown_kind():
    r = dlbench("list", "shedule")
    assert r.returncode == 2 and "Did you mean 'schedule'" in r.stderr


def test_dry_run_prints_resolved_config_and_round_trips(tmp_path):
    r = dlbench("run", "vqlcmd", "--preset", "quick", "--set", "method.w_cm=0.5", "--seed", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["method"]["params"]["w_cm"] == 0.5 and cfg["seed"] == 3 and cfg["preset"] == "quick"
    path = tmp_path / "config.json"
    path.write_text(r.stdout)
    again = dlbench("run", "vqlcmd", "--preset", "quick", "--config", str(path), "--dry-run")
    assert json.loads(again.stdout) == cfg
    from PIL import Image

    for i in range(2):  # --dry-run runs the pre-flight: the data must exist (ffhq has no test split to evaluate on)
        Image.new("RGB", (32, 32)).save(tmp_path / f"{i}.png")
    files = dlbench("run", "vqlcmd", "--preset", "quick", "--dataset", "ffhq", "--data-dir", str(tmp_path),
                    "--skip-bad", "--set", "dataset.resolution=32", "--set", "evaluation.enabled=false", "--dry-run")
    assert files.returncode == 0, files.stderr
    params = json.loads(files.stdout)["dataset"]["params"]
    assert params["data_dir"] == str(tmp_path) and params["skip_bad"] is True
    refused = dlbench("run", "vqlcmd", "--preset", "quick", "--dataset", "ffhq", "--data-dir", str(tmp_path / "none"),
                      "--dry-run")  # what `run` would refuse, --dry-run refuses
    assert refused.returncode == 2 and "dataset 'ffhq' not found" in refused.stderr


def test_missing_dataset_is_actionable(tmp_path):
    r = dlbench("run", "vq-diffusion", "--preset", "quick", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"),
                "--out", str(tmp_path / "runs"), env={"DLBENCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cifar10" in r.stderr and str(tmp_path / "nope") in r.stderr and "Traceback" not in r.stderr


def test_broken_third_party_plugin_does_not_take_the_cli_down(tmp_path):
    from plugin_helpers import make_distribution

    root = make_distribution(tmp_path / "site", "tp-broken", {"tp_broken": "tp_broken"},
                             {"tp_broken": "raise RuntimeError('boom at import')\n"})
    env = {"PYTHONPATH": f"{root}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    r = dlbench("list", "method", env=env)
    assert r.returncode == 0 and "vqlcmd" in r.stdout
    assert "plugin 'tp_broken' (tp-broken) skipped: RuntimeError: boom at import" in r.stderr
    r = dlbench("list", "method", env={**env, "DLBENCH_STRICT_PLUGINS": "1"})
    assert r.returncode == 2 and "tp_broken" in r.stderr and "Traceback" not in r.stderr
