"""The data layer: finding, validating, indexing and loading (synthetic BUSI)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_utils import data
from busi_utils.data import BusiDataError, DataNotFoundError, sources


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_synthetic_dataset_has_busi_layout(synthetic_root):
    assert synthetic_root.name == "Dataset_BUSI_with_GT"
    files = {p.name for p in synthetic_root.rglob("*.png")}
    assert "benign (1)_mask_1.png" in files and "malignant (1).png" in files
    assert Image.open(synthetic_root / "benign" / "benign (5).png").mode == "RGB"
    modes = {Image.open(p).mode for p in synthetic_root.rglob("*_mask.png")}
    assert {"1", "RGB", "RGBA"} <= modes


def test_index_has_one_row_per_image_with_all_columns(synthetic_index):
    idx = synthetic_index
    assert len(idx) == 24 + 16 + 12
    assert idx["image_id"].is_unique
    for col in [
        "image_id",
        "label",
        "image_path",
        "mask_paths",
        "width",
        "height",
        "mode",
        "has_colour_marks",
        "sha256",
    ]:
        assert col in idx.columns
    row = idx.set_index("image_id").loc["benign (1)"]
    assert row["n_masks"] == 2 and row["mask_paths"].count(";") == 1
    marked = set(idx.loc[idx["has_colour_marks"], "image_id"])
    assert marked == {"benign (4)"}


def test_loaded_image_is_grayscale_uint8_and_mask_is_union(synthetic_index):
    row = synthetic_index.set_index("image_id").loc["benign (1)"]
    img = data.load_image(row["image_path"])
    assert img.dtype == np.uint8 and img.ndim == 2 and img.shape == (row["height"], row["width"])
    first, extra = row["mask_paths"].split(";")
    m1, m2 = data.load_mask([first], img.shape), data.load_mask([extra], img.shape)
    merged = data.load_mask(row["mask_paths"], img.shape)
    assert m1.any() and m2.any() and not (m1 & m2).any()
    assert (merged == (m1 | m2)).all()


def test_normal_masks_are_empty(synthetic_index):
    for row in synthetic_index[synthetic_index["label"] == "normal"].itertuples():
        assert not data.load_pair(row)[1].any()


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_every_mask_mode_loads_to_the_same_array(tmp_path, mode):
    truth = np.zeros((20, 30), dtype=bool)
    truth[5:12, 8:20] = True
    img = Image.fromarray(truth.astype(np.uint8) * 255).convert(mode)
    img.save(tmp_path / "m.png")
    assert (data.load_mask([tmp_path / "m.png"]) == truth).all()


def test_transparent_rgba_pixels_are_not_lesion(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:5, :, 3] = 255  # only the top half is opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    assert data.load_mask([tmp_path / "m.png"]).sum() == 50


# ---------------------------------------------------------------- bad input: named file, clear problem


def _expect_error(root, name_part: str, problem_part: str):
    with pytest.raises(BusiDataError) as err:
        data.build_index(root, progress=False)
    assert name_part in str(err.value) and problem_part in str(err.value), str(err.value)


def test_truncated_png_is_named(synthetic_copy):
    path = synthetic_copy / "benign" / "benign (7).png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect_error(synthetic_copy, "benign (7).png", "truncated")


def test_png_that_is_not_an_image_is_named(synthetic_copy):
    (synthetic_copy / "malignant" / "malignant (3).png").write_text("not a png")
    _expect_error(synthetic_copy, "malignant (3).png", "not a readable image")


def test_non_image_file_is_named(synthetic_copy):
    (synthetic_copy / "normal" / "notes.txt").write_text("hello")
    _expect_error(synthetic_copy, "notes.txt", "not an image file")


def test_hidden_files_are_ignored(synthetic_copy):
    (synthetic_copy / "normal" / ".DS_Store").write_bytes(b"\0\0")
    assert len(data.build_index(synthetic_copy, progress=False)) == 52


def test_mask_without_image_is_named(synthetic_copy):
    (synthetic_copy / "benign" / "benign (9).png").unlink()
    _expect_error(synthetic_copy, "benign (9)_mask.png", "mask without an image")


def test_image_without_mask_is_named(synthetic_copy):
    (synthetic_copy / "malignant" / "malignant (2)_mask.png").unlink()
    _expect_error(synthetic_copy, "malignant (2).png", "image without a mask")


def test_mask_of_other_size_is_named(synthetic_copy):
    path = synthetic_copy / "benign" / "benign (6)_mask.png"
    Image.open(path).resize((17, 13)).save(path)
    _expect_error(synthetic_copy, "benign (6)_mask.png", "differs from image size")


def test_unknown_class_folder_is_named(synthetic_copy):
    (synthetic_copy / "cyst").mkdir()
    _expect_error(synthetic_copy, "cyst", "unknown class folder")


def test_missing_class_folder(synthetic_copy):
    shutil.rmtree(synthetic_copy / "normal")
    _expect_error(synthetic_copy, str(synthetic_copy), "class folder(s) missing: normal")


def test_empty_class_folder(synthetic_copy):
    for p in (synthetic_copy / "normal").iterdir():
        p.unlink()
    _expect_error(synthetic_copy, "normal", "empty class folder")


def test_empty_or_wrongly_laid_out_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BusiDataError, match="wrongly laid out"):
        data.build_index(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(BusiDataError, match="wrongly laid out"):
        data.build_index(tmp_path / "flat")


def test_dataset_folder_is_only_read(synthetic_copy, tmp_path):
    before = snapshot(synthetic_copy)
    idx = data.build_index(synthetic_copy, progress=False)
    data.load_or_build_index(synthetic_copy, tmp_path / "index.csv", progress=False)
    for row in idx.itertuples():
        data.load_pair(row)
    assert snapshot(synthetic_copy) == before


# ---------------------------------------------------------------- finding the data


def _zip_of(root: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, Path("Dataset_BUSI_with_GT") / p.relative_to(root))
    return dest


def test_zip_is_extracted_once_into_the_cache_and_verified(synthetic_root, tmp_path):
    zpath = _zip_of(synthetic_root, tmp_path / "BUSI.zip")
    src = data.resolve_data(zpath)
    assert src.kind == "zip" and not src.root.is_relative_to(tmp_path)
    assert len(data.build_index(src.root, progress=False)) == 52
    marker = src.root.parent / ".complete.json"
    stamp = marker.stat().st_mtime_ns
    assert data.resolve_data(zpath).root == src.root
    assert marker.stat().st_mtime_ns == stamp  # reused, not extracted again
    (src.root / "benign" / "benign (1).png").unlink()  # damaged cache: extracted again
    assert (data.resolve_data(zpath).root / "benign" / "benign (1).png").exists()


def test_damaged_zip_is_named(synthetic_root, tmp_path):
    zpath = _zip_of(synthetic_root, tmp_path / "BUSI.zip")
    raw = bytearray(zpath.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 200] = b"\0" * 200
    zpath.write_bytes(bytes(raw))
    with pytest.raises(BusiDataError, match="BUSI.zip"):
        data.resolve_data(zpath)


def test_explicit_root_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(BusiDataError, match="does not exist"):
        data.resolve_data(tmp_path / "nowhere")


def test_busi_root_environment_variable(synthetic_root, monkeypatch):
    monkeypatch.setenv("BUSI_ROOT", str(synthetic_root.parent))
    assert data.resolve_data().root == synthetic_root


def test_data_folder_is_searched(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("BUSI_ROOT", raising=False)
    _zip_of(synthetic_root, tmp_path / "archive.zip")
    src = data.resolve_data(data_dir=tmp_path, allow_download=False, allow_synthetic=False)
    assert src.kind == "zip" and "archive.zip" in src.origin


def test_kagglehub_download_path(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("BUSI_ROOT", raising=False)
    monkeypatch.setattr(sources, "download_with_kagglehub", lambda: synthetic_root.parent)
    src = data.resolve_data(data_dir=tmp_path, allow_download=True, allow_synthetic=False)
    assert src.kind == "kaggle" and src.root == synthetic_root


def test_nothing_found_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSI_ROOT", raising=False)

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(sources, "download_with_kagglehub", offline)
    with pytest.raises(DataNotFoundError) as err:
        data.resolve_data(data_dir=tmp_path, allow_download=True, allow_synthetic=False)
    msg = str(err.value)
    assert "BUSI_ROOT" in msg and str(tmp_path) in msg and "no network" in msg


def test_synthetic_fallback_is_loud(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSI_ROOT", raising=False)
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        src = data.resolve_data(data_dir=tmp_path, allow_download=False)
    assert src.synthetic and "SYNTHETIC DATA" in src.banner()


def test_synthetic_generator_is_seeded(tmp_path):
    from busi_utils.data.synthetic import make_synthetic_busi as make

    r1 = make(tmp_path / "a", counts={"benign": 3, "malignant": 2, "normal": 1}, seed=5)
    r2 = make(tmp_path / "b", counts={"benign": 3, "malignant": 2, "normal": 1}, seed=5)
    assert data.dataset_hash(data.build_index(r1, progress=False)) == data.dataset_hash(
        data.build_index(r2, progress=False)
    )


def test_zip_with_an_unsafe_member_path_is_refused_and_writes_nothing_outside(tmp_path):
    import zipfile

    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("Dataset_BUSI_with_GT/benign/benign (1).png", b"x")
        zf.writestr("../../escaped.png", b"x")
    with pytest.raises(BusiDataError, match=r"evil\.zip.*unsafe member path '\.\./\.\./escaped\.png'"):
        data.extract_zip(zpath, tmp_path / "cache")
    assert not list(tmp_path.rglob("escaped.png"))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # no half extraction left


def test_busi_root_variable_pointing_nowhere_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("BUSI_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(BusiDataError, match="nowhere.*does not exist"):
        data.resolve_data()


def test_array_store_takes_images_and_masks_in_the_order_asked():
    from busi_utils.data import preprocess

    images, masks = np.arange(3 * 4).reshape(3, 2, 2).astype(np.uint8), np.eye(2, dtype=bool)[None].repeat(3, 0)
    masks[1] = False
    store = preprocess.ArrayStore({"ids": np.array(["a", "b", "c"]), "images": images, "masks": masks})
    got_images, got_masks = store.take(["c", "a", "b"])
    assert np.array_equal(got_images, images[[2, 0, 1]]) and np.array_equal(got_masks, masks[[2, 0, 1]])
    assert not np.array_equal(got_images, images)  # the order asked, not the stored one
    with pytest.raises(KeyError):
        store.take(["d"])
