"""Figures for the book: plotly builders, and a renderer that works in the built book *and* in Jupyter.

Why a renderer of our own: plotly's default output inside a kernel is only the
`application/vnd.plotly.v1+json` mime type, which jupyter-book 1.x silently drops, and the stock
`notebook` renderer inlines 4.8 MB of plotly.js into every output. `use_book_renderer()` makes every
figure render as a small HTML snippet (a `<div>` plus a few lines of script) that

* draws with `window.Plotly` when the page already has it: the built book serves plotly.js once, as a
  static file, so pages stay small and need no network;
* otherwise loads plotly.js from the CDN first (Jupyter, Colab, VS Code), through require.js when
  the page uses it (the classic notebook), so the same figure still renders there.

The snippet's element id is derived from the figure's content, so re-running a cell gives the same
output byte for byte.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

RENDERER_NAME = "stego_book"


def plotlyjs_cdn_url() -> str:
    """The CDN address of the plotly.js version that matches the installed plotly package."""
    from plotly.offline import get_plotlyjs_version

    return f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"


_SNIPPET = """\
<div id="{div_id}" class="plotly-graph-div stego-figure" style="height:{height}; width:100%;"></div>
<script type="text/javascript">
(function () {{
  var spec = {spec};
  function draw(Plotly) {{
    Plotly.newPlot("{div_id}", spec.data, spec.layout, {{responsive: true, displaylogo: false}});
  }}
  if (window.Plotly) {{ draw(window.Plotly); return; }}
  var cdn = "{cdn}";
  if (typeof window.requirejs === "function") {{
    window.requirejs.config({{paths: {{plotly: cdn.replace(/\\.js$/, "")}}}});
    window.requirejs(["plotly"], draw);
  }} else {{
    var script = document.createElement("script");
    script.src = cdn;
    script.onload = function () {{ draw(window.Plotly); }};
    document.head.appendChild(script);
  }}
}})();
</script>"""


def figure_html(fig: Any) -> str:
    """HTML for one plotly figure: a div and a script that draws it, without plotly.js itself."""
    import plotly.io as pio

    # Sorted keys: the same figure gives the same text however it was built.
    spec = json.dumps(json.loads(pio.to_json(fig, validate=False, remove_uids=True)),
                      sort_keys=True, separators=(",", ":"))
    height = fig.layout.height
    div_id = "fig-" + hashlib.sha1(spec.encode()).hexdigest()[:12]
    # Keep '</script>' inside strings from ending the script element early.
    spec = spec.replace("</", "<\\/")
    return _SNIPPET.format(
        div_id=div_id,
        height=f"{height}px" if height else "100%",
        spec=spec,
        cdn=plotlyjs_cdn_url(),
    )


def use_book_renderer() -> None:
    """Make plotly figures render as `figure_html` snippets (call once, at the top of a chapter)."""
    import plotly.io as pio
    from plotly.io.base_renderers import MimetypeRenderer

    class BookRenderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
            import plotly.graph_objects as go

            return {"text/html": figure_html(go.Figure(fig_dict, skip_invalid=True))}

    pio.renderers[RENDERER_NAME] = BookRenderer()
    pio.renderers.default = RENDERER_NAME


def _layout(fig, *, title: str, x_title: str, y_title: str, height: int) -> None:
    fig.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, height=height,
        margin=dict(l=60, r=20, t=50, b=50), template="plotly_white",
    )


def lines(x: Sequence[float], curves: Mapping[str, Sequence[float]], *, title: str = "",
          x_title: str = "", y_title: str = "", height: int = 380):
    """One line per named curve over a shared x axis; returns a go.Figure."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=list(x), y=list(y), mode="lines", name=name)
                     for name, y in curves.items()])
    _layout(fig, title=title, x_title=x_title, y_title=y_title, height=height)
    return fig


def lines_with_slider(x: Sequence[float], steps: Mapping[str, Mapping[str, Sequence[float]]], *,
                      slider_label: str, title: str = "", x_title: str = "", y_title: str = "",
                      height: int = 420):
    """Curves that change with a slider, interactive even in the static book (no kernel needed).

    `steps` maps each slider position's label to the curves shown there ({name: y}); every step
    must name the same curves. The first step is shown initially.
    """
    labels = list(steps)
    names = list(steps[labels[0]])
    for label in labels:
        if list(steps[label]) != names:
            raise ValueError(f"step {label!r} has curves {list(steps[label])}, expected {names}")
    fig = lines(x, steps[labels[0]], title=title, x_title=x_title, y_title=y_title, height=height)
    slider_steps = [
        dict(label=label, method="restyle", args=[{"y": [list(steps[label][n]) for n in names]}])
        for label in labels
    ]
    fig.update_layout(sliders=[dict(active=0, steps=slider_steps, currentvalue=dict(prefix=slider_label))])
    return fig



def heatmap(matrix, *, x_labels: Sequence[str], y_labels: Sequence[str], title: str = "",
            x_title: str = "", y_title: str = "", height: int = 460, text_format: str = ".0f"):
    """A labelled heatmap with each cell's value written in it (e.g. a confusion matrix); returns a go.Figure."""
    import numpy as np
    import plotly.graph_objects as go

    values = np.asarray(matrix, dtype=float)
    if values.shape != (len(y_labels), len(x_labels)):
        raise ValueError(f"matrix has shape {values.shape} but there are {len(y_labels)} row and "
                         f"{len(x_labels)} column labels")
    fig = go.Figure(go.Heatmap(z=values, x=list(x_labels), y=list(y_labels), colorscale="Blues",
                               texttemplate=f"%{{z:{text_format}}}", hoverongaps=False))
    _layout(fig, title=title, x_title=x_title, y_title=y_title, height=height)
    fig.update_yaxes(autorange="reversed")
    return fig


def bars(labels: Sequence[str], groups: Mapping[str, Sequence[float]], *, errors: Mapping[str, Sequence[float]]
         | None = None, title: str = "", x_title: str = "", y_title: str = "", height: int = 400):
    """Grouped bars, one group per label and one colour per named series, optional error bars; a go.Figure."""
    import plotly.graph_objects as go

    fig = go.Figure([
        go.Bar(x=list(labels), y=list(values), name=name,
               error_y=dict(type="data", array=list(errors[name])) if errors and name in errors else None)
        for name, values in groups.items()
    ])
    fig.update_layout(barmode="group")
    _layout(fig, title=title, x_title=x_title, y_title=y_title, height=height)
    return fig


def image_data_uri(image, *, quality: int = 90) -> str:
    """A uint8 RGB image (H, W, 3) as a data URI: PNG for flat images (label maps, at most 256 colours,
    lossless and small), JPEG for photos (a fraction of PNG's size). Deterministic bytes."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got shape {array.shape}")
    flat = len(np.unique(array.reshape(-1, 3), axis=0)) <= 256
    buffer = io.BytesIO()
    if flat:
        Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    else:
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    kind = "png" if flat else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_grid(images: Sequence, *, titles: Sequence[str] | None = None, cols: int = 4, title: str = "",
               tile: int = 180):
    """Show uint8 RGB images (H, W, 3) in a grid of subplots, `tile` px per cell; returns a go.Figure.

    Each image is embedded compressed (`image_data_uri`), not as a JSON array of pixels: a page with a
    dozen photos stays at a few hundred kB instead of megabytes.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = -(-len(images) // cols)
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06)
    for i, image in enumerate(images):
        fig.add_trace(go.Image(source=image_data_uri(image)), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=rows * tile + 60, margin=dict(l=10, r=10, t=60, b=10),
                      template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Feature maps as pictures: PCA colours, heat maps, label maps, all as uint8 RGB at display size


def pca_rgb(feats, *, size: int | None = None, clip: float = 0.01):
    """The first three principal components of all patches of all maps as R, G, B: (N, C, h, w) ->
    (N, size, size, 3) uint8 (size None: h x w). One PCA for all maps, so colours compare across images;
    each component is stretched between its `clip` and 1 - `clip` quantiles; the sign of a component is
    fixed (its largest loading positive) so that colours repeat across runs and machines."""
    import torch

    N, C, h, w = feats.shape
    rows = feats.permute(0, 2, 3, 1).reshape(-1, C).float()
    rows = rows - rows.mean(0)
    _, _, directions = torch.linalg.svd(rows, full_matrices=False)   # (C, C), rows = directions
    directions = directions[:3]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True)))
    pca = rows @ (directions * signs).T                                # (N*h*w, 3)
    low, high = pca.quantile(clip, dim=0), pca.quantile(1 - clip, dim=0)
    rgb = ((pca - low) / (high - low)).clamp(0, 1).reshape(N, h, w, 3).permute(0, 3, 1, 2)
    return _resized_uint8(rgb, size)


def heat_rgb(maps, *, size: int | None = None, colorscale: str = "viridis"):
    """Each map min-max scaled on its own and coloured: (N, h, w) -> (N, size, size, 3) uint8."""
    import numpy as np
    import torch
    from plotly.colors import sample_colorscale

    maps = maps.float()
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = ((flat - low) / (high - low).clamp_min(1e-12)).reshape(maps.shape)
    table = sample_colorscale(colorscale, np.linspace(0, 1, 256).tolist(), colortype="tuple")
    lut = torch.tensor(table, dtype=torch.float32)                        # (256, 3) in [0, 1]
    rgb = lut[(scaled * 255).round().long()].permute(0, 3, 1, 2)          # (N, 3, h, w)
    return _resized_uint8(rgb, size)


def _resized_uint8(rgb, size: int | None):
    """(N, 3, h, w) in [0, 1] -> (N, size, size, 3) uint8, enlarged by nearest neighbour (crisp patches)."""
    import torch.nn.functional as F

    if size is not None:
        rgb = F.interpolate(rgb, size=(size, size), mode="nearest")
    return (rgb * 255).round().byte().permute(0, 2, 3, 1).numpy()


def qualitative_palette(n: int):
    """n distinct colours for cluster ids (plotly's D3 set, repeated past 10): -> (n, 3) uint8."""
    import numpy as np
    from plotly.colors import hex_to_rgb, qualitative

    colours = [hex_to_rgb(c) for c in qualitative.D3]
    return np.array([colours[i % len(colours)] for i in range(n)], dtype=np.uint8)


def similarity_explorer(feats: Mapping[str, Any], *, queries: int = 5, size: int = 16, height: int = 520,
                        title: str = ""):
    """The feature-correspondence explorer: cosine similarity of one patch of image 0 to every patch of every
    image, one row per backbone (`feats`: name -> (N, C, h, w); grids may differ), one column per image; a
    slider picks the query from a `queries` x `queries` grid of positions. Maps are resampled to
    `size` x `size` (area average) so that the backbones' rows line up. Interactive in the static book."""
    import plotly.express as px
    import torch
    import torch.nn.functional as F

    names = list(feats)
    N = next(iter(feats.values())).shape[0]
    centres = [(i + 0.5) / queries for i in range(queries)]   # query positions, as fractions of the image
    positions = [(fy, fx) for fy in centres for fx in centres]
    units = {name: F.normalize(feats[name].float(), dim=1) for name in names}      # (N, C, h, w) each
    frames = []
    for fy, fx in positions:
        rows = []
        for name in names:
            unit = units[name]
            h, w = unit.shape[-2:]
            sim = torch.einsum("c,nchw->nhw", unit[0, :, int(fy * h), int(fx * w)], unit)
            rows.append(F.interpolate(sim[:, None], size=(size, size), mode="area")[:, 0])
        frames.append(torch.cat(rows))                                                 # (B*N, size, size)
    fig = px.imshow(torch.stack(frames).numpy().round(3), animation_frame=0, facet_col=1, facet_col_wrap=N, zmin=0,
                    zmax=1, color_continuous_scale="viridis", height=height, title=title,
                    labels=dict(animation_frame="query", facet_col="panel", color="cosine"))
    for step, (fy, fx) in zip(fig.layout.sliders[0].steps, positions):
        step.label = f"{fy:.0%} down, {fx:.0%} across"
    fig.for_each_annotation(lambda a: a.update(text=_panel_title(int(a.text.split("=")[1]), names, N)))
    fig.layout.updatemenus = []                     # the slider is enough: no play button
    fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    return fig.update_layout(margin=dict(l=10, r=10, t=60, b=10))


def _panel_title(panel: int, names: Sequence[str], n_images: int) -> str:
    name, image = names[panel // n_images], panel % n_images
    return f"{name}: image {image}" if image == 0 else f"image {image}"
