from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stego_lite
from stego_lite.inference import overlay, segment_folder, write_segmentations
from test_evaluate import BLUE, RED, colour_model


def red_blue(size: int = 20) -> np.ndarray:
    rgb = np.zeros((size, size + 4, 3), dtype=np.uint8)
    rgb[:, :12], rgb[:, 12:] = RED, BLUE
    return rgb


def test_segment_accepts_arrays_images_files_and_folders(tmp_path: Path) -> None:
    Image.fromarray(red_blue()).save(tmp_path / "a.png")
    Image.fromarray(red_blue()).convert("L").save(tmp_path / "b.jpg")  # grayscale becomes RGB
    model = colour_model()
    from_folder = stego_lite.segment(tmp_path, model, res=None)
    assert [r.name for r in from_folder] == ["a", "b"]
    from_array = stego_lite.segment(red_blue(), model, res=None)[0]
    from_image = stego_lite.segment([Image.fromarray(red_blue())], model, res=None)[0]
    assert np.array_equal(from_array.cluster, from_folder[0].cluster)
    assert np.array_equal(from_image.linear, from_folder[0].linear)
    r = from_array
    assert r.image.shape == (20, 24, 3) and r.cluster.shape == (20, 24)   # trimmed to the 4-px patch grid
    # the linear probe names the halves; cluster ids follow the probe (0 = blue here)
    assert (r.linear[:, :10] == 0).all() and (r.linear[:, 14:] == 1).all()
    assert (r.cluster[:, :10] == 1).all() and (r.cluster[:, 14:] == 0).all()


def test_assignment_renames_clusters_to_classes() -> None:
    r = stego_lite.segment(red_blue(), colour_model(), res=None, assignment=np.array([1, 0]))[0]
    assert (r.cluster[:, :10] == 0).all() and (r.cluster[:, 14:] == 1).all()


def test_overlay_blends_and_leaves_unmatched_pixels_bare() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    ids = np.array([[0, 1], [-1, 0]])
    palette = np.array([[0, 0, 0], [200, 200, 200]], np.uint8)
    out = overlay(image, ids, palette, alpha=0.5)
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 1].tolist() == [150, 150, 150]
    assert out[1, 0].tolist() == [100, 100, 100]


def test_folder_writes_pngs_and_reports_unreadable_files(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(red_blue()).save(src / "good.png")
    (src / "broken.jpg").write_bytes(b"not an image")
    written, failed = segment_folder(src, colour_model(), out, res=None)
    assert [p.name for p, _ in failed] == ["broken.jpg"] and "broken.jpg" in failed[0][1]
    assert sorted(p.name for p in written) == ["good_cluster.png", "good_cluster_overlay.png",
                                                "good_linear.png", "good_linear_overlay.png"]
    mask = np.asarray(Image.open(out / "good_linear.png"))
    assert mask.shape == (20, 24) and set(np.unique(mask)) == {0, 1}
    assert not list(out.glob("*.tmp"))


def test_unmatched_clusters_are_written_as_255(tmp_path: Path) -> None:
    r = stego_lite.segment(red_blue(), colour_model(), res=None, assignment=np.array([1, 0]))[0]
    r = r._replace(cluster=np.where(r.cluster == 0, -1, r.cluster))
    write_segmentations([r], tmp_path)
    assert 255 in np.asarray(Image.open(tmp_path / "image0_cluster.png"))


def test_float_arrays_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        stego_lite.segment(np.zeros((8, 8, 3), np.float32), colour_model())


def test_folder_reports_an_image_too_small_to_segment(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(red_blue()).save(src / "good.png")
    Image.fromarray(red_blue()[:2, :2]).save(src / "tiny.png")   # smaller than one 4-px patch
    written, failed = segment_folder(src, colour_model(), out, res=None)
    assert [p.name for p, _ in failed] == ["tiny.png"] and "smaller than one 4-px patch" in failed[0][1]
    assert len(written) == 4


def test_a_bad_assignment_stops_the_folder_before_any_image(tmp_path: Path) -> None:
    Image.fromarray(red_blue()).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="each of the 2 classes its own cluster id"):
        segment_folder(tmp_path, colour_model(), tmp_path / "out", res=None, assignment=[0, 0])
    assert not (tmp_path / "out").exists()
