"""Figures: one small HTML snippet per figure, without plotly.js, the same on every run."""
from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from stego_lite import viz


@pytest.fixture
def fig() -> go.Figure:
    return viz.lines([0, 1, 2], {"a": [1, 2, 3], "b": [3, 2, 1]}, title="t")


def test_snippet_holds_the_figure_but_not_plotlyjs(fig: go.Figure) -> None:
    html = viz.figure_html(fig)
    assert len(html) < 20_000  # plotly.js alone is about 4.8 MB
    assert "PlotlyConfig" not in html and "function(t,e)" not in html
    spec = json.loads(re.search(r"var spec = (.*);\n", html).group(1).replace("<\\/", "</"))
    assert spec["data"][0]["y"] == [1, 2, 3] and spec["data"][1]["name"] == "b"
    div_id = re.search(r'<div id="([^"]+)"', html).group(1)
    assert f'Plotly.newPlot("{div_id}"' in html
    assert viz.plotlyjs_cdn_url() in html  # the fallback for Jupyter and Colab


def test_snippet_is_deterministic_and_content_addressed(fig: go.Figure) -> None:
    assert viz.figure_html(fig) == viz.figure_html(go.Figure(fig))
    other = viz.lines([0, 1, 2], {"a": [1, 2, 4]})
    assert re.search(r'id="(fig-\w+)"', viz.figure_html(fig)).group(1) != \
        re.search(r'id="(fig-\w+)"', viz.figure_html(other)).group(1)


def test_script_end_tags_in_text_are_escaped() -> None:
    html = viz.figure_html(viz.lines([0], {"</script><b>x": [1]}))
    assert html.count("</script>") == 1


def test_book_renderer_emits_html_only(fig: go.Figure) -> None:
    previous = pio.renderers.default
    try:
        viz.use_book_renderer()
        bundle = fig._repr_mimebundle_()
        assert list(bundle) == ["text/html"]
        assert bundle["text/html"] == viz.figure_html(fig)
    finally:
        pio.renderers.default = previous


def test_slider_steps_restyle_every_curve() -> None:
    steps = {"0": {"a": [0, 0], "b": [1, 1]}, "1": {"a": [2, 2], "b": [3, 3]}}
    fig = viz.lines_with_slider([0, 1], steps, slider_label="s = ")
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1"]
    assert slider.steps[1].args[0]["y"] == [[2, 2], [3, 3]]
    assert list(fig.data[0].y) == [0, 0]


def test_slider_rejects_steps_with_different_curves() -> None:
    with pytest.raises(ValueError, match="step '1' has curves"):
        viz.lines_with_slider([0], {"0": {"a": [0]}, "1": {"b": [0]}}, slider_label="s")


def test_heatmap_checks_labels_and_keeps_values() -> None:
    fig = viz.heatmap([[1, 2], [3, 4]], x_labels=["a", "b"], y_labels=["c", "d"])
    assert fig.data[0].z.tolist() == [[1, 2], [3, 4]] and list(fig.data[0].x) == ["a", "b"]
    with pytest.raises(ValueError, match="3 row"):
        viz.heatmap([[1, 2]], x_labels=["a", "b"], y_labels=["c", "d", "e"])


def test_bars_group_series_with_errors() -> None:
    fig = viz.bars(["x", "y"], {"s1": [1, 2], "s2": [3, 4]}, errors={"s1": [0.1, 0.2]})
    assert [t.name for t in fig.data] == ["s1", "s2"]
    assert list(fig.data[0].error_y.array) == [0.1, 0.2] and fig.data[1].error_y.array is None


def test_image_grid_places_every_image() -> None:
    import numpy as np

    images = [np.full((4, 5, 3), i * 40, np.uint8) for i in range(5)]
    fig = viz.image_grid(images, titles=list("abcde"), cols=2)
    assert len(fig.data) == 5 and fig.layout.height == 3 * 180 + 60
    assert fig.data[4].source.startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="5 images but 2 titles"):
        viz.image_grid(images, titles=["a", "b"])


def test_image_data_uri_round_trips_label_maps_and_shrinks_photos() -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, (64, 64))
    label_map = (np.array([[i * 30, 255 - i * 30, i * 10] for i in range(8)], np.uint8))[labels]
    uri = viz.image_data_uri(label_map)
    assert uri.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(decoded, label_map), "label maps are stored losslessly"
    y, x = np.mgrid[0:128, 0:128]
    photo = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)   # a smooth gradient, many colours
    photo_uri = viz.image_data_uri(photo)
    assert photo_uri.startswith("data:image/jpeg;base64,") and len(photo_uri) < photo.size
    assert viz.image_data_uri(photo) == photo_uri, "deterministic bytes"
    with pytest.raises(ValueError, match="RGB image"):
        viz.image_data_uri(np.zeros((4, 4), np.uint8))
