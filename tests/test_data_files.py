"""Image-file datasets on real on-disk formats: folder trees, a StyleGAN-style zip, an LSUN LMDB."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlbench.data import DATASET_CLASSES, CorruptImageError, DatasetNotFoundError, load_split_tensors
from dlbench.data.errors import DatasetFormatError
from dlbench.data.lsun import close_lmdb

DATASETS = {cls.name: cls for cls in DATASET_CLASSES}  # the built-in classes by registry name


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("DLBENCH_DATA", raising=False)


def rgb_image(seed: int, size=(12, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def cfg(name: str, **kw):
    return DATASETS[name].Config(**kw)


# ---------------------------------------------------------------------------------------------
# folder / imagenet
# ---------------------------------------------------------------------------------------------


def make_tree(root: Path, classes=("b_dog", "a_cat"), per_class=2) -> dict[str, np.ndarray]:
    out = {}
    for c_i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            arr = rgb_image(10 * c_i + j)
            rel = f"{c}/{j}.png"
            (root / rel).write_bytes(encode(arr, "PNG"))
            out[rel] = arr
    return out


def test_folder_tree_sorted_unlabelled_and_with_subfolder_labels(tmp_path):
    imgs = make_tree(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"junk")
    ds = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=12))
    x, y = load_split_tensors(ds, "train")
    keys = sorted(imgs)  # a_cat/0.png, a_cat/1.png, b_dog/0.png, b_dog/1.png
    assert x.shape == (4, 3, 12, 12) and y.tolist() == [-1] * 4
    for i, k in enumerate(keys):  # PNG is lossless: exact pixels
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), imgs[k])
    labelled = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=12, labels_from_subfolders=True))
    assert load_split_tensors(labelled, "train")[1].tolist() == [0, 0, 1, 1]
    assert labelled.num_classes == 2 and ds.num_classes is None


def test_folder_grey_png_to_rgb_and_crop_modes(tmp_path):
    grey = np.zeros((10, 20), np.uint8)
    grey[:, :5] = 255  # white left quarter
    (tmp_path / "g.png").write_bytes(encode(grey, "PNG"))
    center = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=10)).split("train")[0][0]
    resized = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=10, crop="resize")).split("train")[0][0]
    assert center.shape == resized.shape == (3, 10, 10)
    assert center[:, :, 0].max() == 0 and resized[:, :, 0].min() == 255
    assert torch.equal(resized[0], resized[1])  # grey -> RGB repeats the channel


def test_imagenet_labels_are_sorted_train_folder_indices(tmp_path):
    make_tree(tmp_path / "train", classes=("n02", "n01", "n03"), per_class=1)
    make_tree(tmp_path / "val", classes=("n03", "n01"), per_class=2)
    ds = DATASETS["imagenet"](cfg("imagenet", data_dir=str(tmp_path), resolution=8))
    assert ds.num_classes == 3 and ds.classes == ["n01", "n02", "n03"]
    assert load_split_tensors(ds, "train")[1].tolist() == [0, 1, 2]
    assert load_split_tensors(ds, "val")[1].tolist() == [0, 0, 2, 2]  # labels from train's class list
    make_tree(tmp_path / "val", classes=("n99",), per_class=1)
    with pytest.raises(DatasetFormatError, match="n99"):
        DATASETS["imagenet"](cfg("imagenet", data_dir=str(tmp_path), resolution=8)).split("val")


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    make_tree(tmp_path, classes=("c",), per_class=3)
    (tmp_path / "c" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=12))
    with pytest.raises(CorruptImageError, match=r"c/1\.png") as err:
        load_split_tensors(ds, "train")
    assert "skip_bad" in str(err.value)
    ds = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=12, skip_bad=True))
    x, _ = load_split_tensors(ds, "train")
    assert len(x) == 2 and ds.skipped == 1
    split = ds.split("train")
    assert torch.equal(split[1][0], split[2][0])  # map-style access substitutes the next readable image
    assert split.skipped == 1


def test_folder_fingerprint_changes_with_a_file_and_with_resolution(tmp_path):
    make_tree(tmp_path)
    fp = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path))).fingerprint("train")
    assert fp == DATASETS["folder"](cfg("folder", data_dir=str(tmp_path))).fingerprint("train")
    assert fp != DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=32)).fingerprint("train")
    p = tmp_path / "a_cat" / "0.png"
    p.write_bytes(encode(rgb_image(99), "PNG"))
    os.utime(p, ns=(1, 1))  # a rewrite is seen via size or mtime
    assert fp != DATASETS["folder"](cfg("folder", data_dir=str(tmp_path))).fingerprint("train")
    (tmp_path / "a_cat" / "new.jpg").write_bytes(encode(rgb_image(5), "JPEG"))
    fp2 = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path))).fingerprint("train")
    assert fp2 != fp


def test_folder_splits_and_missing_message(tmp_path):
    make_tree(tmp_path / "train")
    make_tree(tmp_path / "test", per_class=1)
    ds = DATASETS["folder"](cfg("folder", data_dir=str(tmp_path), resolution=8))
    assert len(ds.split("train")) == 4 and len(ds.split("test")) == 2
    with pytest.raises(DatasetNotFoundError, match="no image files in val/"):
        ds.split("val")


# ---------------------------------------------------------------------------------------------
# ffhq: folder or StyleGAN-style zip
# ---------------------------------------------------------------------------------------------


def make_stylegan_zip(path: Path, n: int = 3) -> list[np.ndarray]:
    arrays = [rgb_image(i, size=(16, 16)) for i in range(n)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:  # dataset_tool.py stores PNGs
        for i, a in enumerate(arrays):
            zf.writestr(f"{i // 1000:05d}/img{i:08d}.png", encode(a, "PNG"))
        zf.writestr("dataset.json", '{"labels": null}')
    return arrays


def test_ffhq_zip_by_file_and_by_folder(tmp_path):
    arrays = make_stylegan_zip(tmp_path / "ffhq-16x16.zip")
    for data_dir in (tmp_path / "ffhq-16x16.zip", tmp_path):
        ds = DATASETS["ffhq"](cfg("ffhq", data_dir=str(data_dir), resolution=16))
        x, y = load_split_tensors(ds, "train")
        assert x.shape == (3, 3, 16, 16) and y.tolist() == [-1, -1, -1] and ds.num_classes is None
        np.testing.assert_array_equal(x[2].permute(1, 2, 0).numpy(), arrays[2])
    small = DATASETS["ffhq"](cfg("ffhq", data_dir=str(tmp_path), resolution=8)).split("train")
    assert pickle.loads(pickle.dumps(small))[0][0].shape == (3, 8, 8)  # picklable for DataLoader workers


def test_ffhq_zip_corrupt_member_named_and_fingerprint(tmp_path):
    path = tmp_path / "ffhq.zip"
    make_stylegan_zip(path)
    fp = DATASETS["ffhq"](cfg("ffhq", data_dir=str(path))).fingerprint("train")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("00000/img00000009.png", b"garbage")
    with pytest.raises(CorruptImageError, match=r"ffhq\.zip:00000/img00000009\.png"):
        load_split_tensors(DATASETS["ffhq"](cfg("ffhq", data_dir=str(path), resolution=8)), "train")
    assert fp != DATASETS["ffhq"](cfg("ffhq", data_dir=str(path))).fingerprint("train")


def test_ffhq_several_zips_is_ambiguous(tmp_path):
    make_stylegan_zip(tmp_path / "a.zip")
    make_stylegan_zip(tmp_path / "b.zip")
    with pytest.raises(DatasetNotFoundError, match="several zips"):
        DATASETS["ffhq"](cfg("ffhq", data_dir=str(tmp_path))).split("train")


# ---------------------------------------------------------------------------------------------
# lsun: official LMDB export
# ---------------------------------------------------------------------------------------------


def make_lmdb(path: Path, values: dict[bytes, bytes]) -> None:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k, v)
    env.close()


def test_lsun_lmdb_webp_and_jpeg_values(tmp_path):
    arrays = [rgb_image(i, size=(12, 20)) for i in range(3)]
    values = {
        b"0a1f": encode(arrays[0], "WEBP", lossless=True),
        b"13cc": encode(arrays[1], "WEBP", lossless=True),
        b"ff00": encode(arrays[2], "JPEG", quality=95),
    }
    make_lmdb(tmp_path / "church_outdoor_train_lmdb", values)
    ds = DATASETS["lsun-church"](cfg("lsun-church", data_dir=str(tmp_path), resolution=12, crop="center"))
    x, y = load_split_tensors(ds, "train")
    assert x.shape == (3, 3, 12, 12) and y.tolist() == [-1, -1, -1]
    # key order 0a1f, 13cc, ff00; lossless webp + center crop of 12x20 = columns 4..15, no resampling
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), arrays[0][:, 4:16])
    jpeg = np.asarray(Image.open(io.BytesIO(values[b"ff00"])).convert("RGB"))  # PIL's decode is the oracle
    np.testing.assert_array_equal(x[2].permute(1, 2, 0).numpy(), jpeg[:, 4:16])
    with pytest.raises(DatasetNotFoundError, match="church_outdoor_val_lmdb"):
        ds.split("val")


def test_lsun_lmdb_bad_value_named_skip_and_fingerprint(tmp_path):
    good = encode(rgb_image(0), "WEBP", lossless=True)
    make_lmdb(tmp_path / "bedroom_train_lmdb", {b"a": good, b"b": b"RIFF....WEBPjunk", b"c": good})
    ds = DATASETS["lsun-bedroom"](cfg("lsun-bedroom", data_dir=str(tmp_path), resolution=12))
    fp = ds.fingerprint("train")
    with pytest.raises(CorruptImageError, match="bedroom_train_lmdb key b"):
        load_split_tensors(ds, "train")
    skip = DATASETS["lsun-bedroom"](cfg("lsun-bedroom", data_dir=str(tmp_path), resolution=12, skip_bad=True))
    assert len(load_split_tensors(skip, "train")[0]) == 2 and skip.skipped == 1
    assert fp != DATASETS["lsun-bedroom"](cfg("lsun-bedroom", data_dir=str(tmp_path), resolution=16)).fingerprint("train")
    close_lmdb(tmp_path / "bedroom_train_lmdb")  # py-lmdb: one open environment per path and process
    make_lmdb(tmp_path / "bedroom_train_lmdb", {b"d": good})
    assert fp != DATASETS["lsun-bedroom"](cfg("lsun-bedroom", data_dir=str(tmp_path), resolution=12)).fingerprint("train")


def test_lsun_image_folder_fallback(tmp_path):
    make_tree(tmp_path / "train", classes=("x",), per_class=2)
    ds = DATASETS["lsun-church"](cfg("lsun-church", data_dir=str(tmp_path), resolution=8))
    assert len(ds.split("train")) == 2


def test_dataloader_workers_read_lmdb_and_zip_after_the_parent_did(tmp_path):
    # the parent reads first (its LMDB env / zip handle is open), then forked workers must still read
    good = encode(rgb_image(0), "WEBP", lossless=True)
    make_lmdb(tmp_path / "church_outdoor_train_lmdb", {b"a": good, b"b": good})
    make_stylegan_zip(tmp_path / "faces.zip", n=2)
    for ds in (
        DATASETS["lsun-church"](cfg("lsun-church", data_dir=str(tmp_path), resolution=8)),
        DATASETS["ffhq"](cfg("ffhq", data_dir=str(tmp_path / "faces.zip"), resolution=8)),
    ):
        split = ds.split("train")
        parent = torch.stack([split[0][0], split[1][0]])
        loader = torch.utils.data.DataLoader(split, batch_size=2, num_workers=1, multiprocessing_context="fork")
        (batch, labels), = list(loader)
        assert torch.equal(batch, parent) and labels.tolist() == [-1, -1]
