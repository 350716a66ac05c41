"""SynthStuff scenes: procedural images whose classes differ by texture and shape, never by colour.

A scene is 2-4 "stuff" regions (a domain-warped Voronoi partition, so boundaries are irregular but smooth)
with 1-3 "things" painted on top. Every region and thing is painted as `c1 + (c2 - c1) * t`: `t` in [0, 1]
is the class's texture and the two colours `c1`, `c2` come from ONE distribution shared by all classes,
so a pixel's colour says nothing about its class. Each thing has a class-specific shape *and* fill
pattern, so it can be recognised from a patch's neighbourhood too (with flat-filled shapes, even a
supervised ViT left thing classes near zero IoU on a similar generator).

Texture periods are in pixels (they must stay visible to 8-px patches); region and thing sizes scale
with the image side (the design size is 96 px).

Scene types (the `scenes` switch of SynthStuff): by default every region draws its class from all five
stuff classes and every thing from all three thing classes, so an image's classes say little about each
other. A `SceneType` fixes which classes may appear together, as a beach has sand and sea and people: two
stuff classes, which take turns over the regions (two regions may then show the same class), and one thing
class. Every class is in equally many types, so over uniformly drawn types each class stays as frequent as
without scenes; the layout (regions, things, their sizes) is drawn by the same code, from the same laws.
`texture_zoom` (the `nuisance` switch) scales every texture's period, never the layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np
from scipy import ndimage

STUFF_CLASSES = ("stripes", "checks", "brick", "grass", "gravel")
THING_CLASSES = ("rings", "dots", "hatch")   # disc, triangle, square
CLASSES = STUFF_CLASSES + THING_CLASSES
PALETTE = np.array(
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66],     # Okabe-Ito colours, for display only
     [0, 114, 178], [213, 94, 0], [204, 121, 167], [90, 90, 90]], dtype=np.uint8)

_DESIGN_SIZE = 96        # geometry below is given for a 96-px image and scaled to the actual side
_MIN_COLOUR_DIST = 0.4   # ||c1 - c2|| in RGB [0, 1]: the pattern must be visible
_NOISE_STD = 0.02        # per-pixel Gaussian noise, in [0, 1] intensity units
# photo pixels per image pixel: keeps the three photos in different frequency bands
_PHOTO_ZOOM = {"brick": (1.6, 2.6), "grass": (1.3, 2.0), "gravel": (0.8, 1.1)}


@dataclass(frozen=True)
class SceneType:
    """Which classes an image of this scene type may show: two stuff classes and one thing class."""

    stuff: tuple[int, ...]   # ids into STUFF_CLASSES
    thing: int               # id into THING_CLASSES

    def stuff_classes(self, rng: np.random.Generator, n_regions: int) -> np.ndarray:
        """The class of each of `n_regions` regions: the type's stuff classes in a random order, in turn."""
        return np.resize(rng.permutation(np.asarray(self.stuff)), n_regions)


@lru_cache(maxsize=None)   # immutable (a tuple of frozen types); asked for once per image
def scene_types() -> tuple[SceneType, ...]:
    """The 30 scene types: every pair of stuff classes with every thing class. Each stuff class is in 12
    types, each thing class in 10: drawn uniformly, the types keep every class's frequency."""
    pairs = combinations(range(len(STUFF_CLASSES)), 2)
    return tuple(SceneType(pair, t) for pair in pairs for t in range(len(THING_CLASSES)))


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image texture photo (brick, grass, gravel) as float32 (512, 512), contrast-stretched."""
    from skimage import data

    img = getattr(data, name)().astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    return np.clip((img - lo) / (hi - lo), 0, 1)


def _smooth_step(x: np.ndarray, sharpness: float = 4.0) -> np.ndarray:
    """Soft square wave from a sine-like signal in [-1, 1]: crisp edges, no aliasing."""
    return 0.5 + 0.5 * np.tanh(sharpness * x)


def _rotate(xx: np.ndarray, yy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return c * xx + s * yy, -s * xx + c * yy


def _texture(name: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Texture `t` in [0, 1] of one class on the pixel grid: (H, W), (H, W) -> (H, W)."""
    if name == "stripes":      # near-horizontal stripes, period 8-12 px
        u, _ = _rotate(xx, yy, np.pi / 2 + rng.uniform(-np.pi / 6, np.pi / 6))
        return _smooth_step(np.sin(2 * np.pi * u / rng.uniform(8, 12) + rng.uniform(0, 2 * np.pi)))
    if name == "checks":       # rotated checkerboard, cell 5-7 px
        u, v = _rotate(xx, yy, rng.uniform(0, np.pi / 2))
        cell, phase = rng.uniform(5, 7), rng.uniform(0, 2 * np.pi, 2)
        return _smooth_step(np.sin(np.pi * u / cell + phase[0]) * np.sin(np.pi * v / cell + phase[1]), 6)
    if name in _PHOTO_ZOOM:    # photo, scaled and rotated (brick stays near vertical)
        photo = _photo(name)
        zoom = rng.uniform(*_PHOTO_ZOOM[name])
        theta = rng.uniform(-np.pi / 9, np.pi / 9) if name == "brick" else rng.uniform(0, 2 * np.pi)
        u, v = _rotate(xx - xx.mean(), yy - yy.mean(), theta)
        centre = 256 + rng.uniform(-60, 60, 2)
        t = ndimage.map_coordinates(photo, [v * zoom + centre[0], u * zoom + centre[1]], order=1,
                                    mode="mirror")
        return t[:, ::-1] if rng.random() < 0.5 else t
    if name == "rings":        # concentric rings around the thing's centre, period 4-5.5 px
        r = np.hypot(xx, yy)
        return _smooth_step(np.sin(2 * np.pi * r / rng.uniform(4, 5.5) + rng.uniform(0, 2 * np.pi)))
    if name == "dots":         # lattice of round dots, spacing 5-6.5 px
        spacing = rng.uniform(5, 6.5)
        u, v = _rotate(xx, yy, rng.uniform(0, np.pi / 2))
        du = (u / spacing) % 1 - 0.5
        dv = (v / spacing) % 1 - 0.5
        return _smooth_step((0.32 - np.hypot(du, dv) * 1.0) * 8, 3)
    if name == "hatch":        # two crossing families of thin lines, period 5-6.5 px
        period = rng.uniform(5, 6.5)
        u, v = _rotate(xx, yy, rng.uniform(0, np.pi / 2))
        line_u = np.cos(2 * np.pi * u / period)
        line_v = np.cos(2 * np.pi * v / period)
        return _smooth_step(np.maximum(line_u, line_v) - 0.6, 5)
    raise ValueError(f"unknown SynthStuff texture {name!r}; choose one of {CLASSES}")


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours in [0, 1], at least _MIN_COLOUR_DIST apart; the same law for every class."""
    while True:
        c1, c2 = rng.uniform(0.0, 1.0, (2, 3))
        if np.linalg.norm(c1 - c2) >= _MIN_COLOUR_DIST:
            return c1, c2


def _smooth_field(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, scale: float) -> np.ndarray:
    """A smooth random field (sum of 3 random plane waves, wavelengths 0.4-1.2 image sides): (H, W)."""
    field = np.zeros_like(xx)
    for _ in range(3):
        theta, phase = rng.uniform(0, 2 * np.pi, 2)
        wavelength = rng.uniform(0.4, 1.2) * scale
        field += np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / wavelength + phase)
    return field / 3


def _stuff_partition(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Region id of every pixel for 2-4 regions with irregular, smooth boundaries: (H, W) int."""
    n_regions = int(rng.integers(2, 5))
    seeds = rng.uniform(0, size, (n_regions, 2))
    warp = 0.12 * size
    wx = xx + warp * _smooth_field(rng, xx, yy, size)
    wy = yy + warp * _smooth_field(rng, xx, yy, size)
    dist = (wx[None] - seeds[:, 0, None, None]) ** 2 + (wy[None] - seeds[:, 1, None, None]) ** 2
    return dist.argmin(0)


def _thing_mask(name: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Shape of a thing in its own rotated frame (u, v centred on it): disc, triangle or square."""
    if name == "rings":
        return np.hypot(u, v) <= radius
    if name == "dots":     # equilateral triangle with circumradius 1.5 r (area close to the disc's)
        inradius = 0.75 * radius
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        return np.all([np.cos(a) * u + np.sin(a) * v <= inradius for a in angles], axis=0)
    if name == "hatch":    # square, half-side 0.9 r
        return (np.abs(u) <= 0.9 * radius) & (np.abs(v) <= 0.9 * radius)
    raise ValueError(f"unknown SynthStuff thing {name!r}; choose one of {THING_CLASSES}")


def render_scene(rng: np.random.Generator, size: int, scene: SceneType | None = None, *,
                 texture_zoom: float = 1.0, layout: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene: -> image (size, size, 3) uint8 and label (size, size) uint8, class ids into CLASSES.

    With a `scene` type, the classes are drawn from that type's (the layout is drawn as without). Textures
    are evaluated at coordinates divided by `texture_zoom` (the same draws: labels do not change). A
    `layout` dict receives the geometry: "regions" (the region id of every pixel) and "things" (each thing's
    mask), for statistics that must not depend on the classes.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    zoom = (lambda a: a) if texture_zoom == 1.0 else (lambda a: a / texture_zoom)
    scale = size / _DESIGN_SIZE
    img = np.empty((size, size, 3))
    label = np.empty((size, size), dtype=np.uint8)

    regions = _stuff_partition(rng, size, xx, yy)
    n_regions = int(regions.max()) + 1
    if scene is None:
        stuff = rng.choice(len(STUFF_CLASSES), n_regions, replace=False)
    else:
        stuff = scene.stuff_classes(rng, n_regions)
    for region, cls in enumerate(stuff):
        mask = regions == region
        c1, c2 = _colour_pair(rng)
        t = _texture(STUFF_CLASSES[cls], rng, zoom(xx), zoom(yy))
        img[mask] = c1 + (c2 - c1) * t[mask][:, None]
        label[mask] = cls

    things = []
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(THING_CLASSES))) if scene is None else scene.thing
        name = THING_CLASSES[k]
        radius = rng.uniform(12, 22) * scale
        cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
        u, v = _rotate(xx - cx, yy - cy, rng.uniform(0, 2 * np.pi))
        mask = _thing_mask(name, u, v, radius)
        c1, c2 = _colour_pair(rng)
        t = _texture(name, rng, zoom(u), zoom(v))
        img[mask] = c1 + (c2 - c1) * t[mask][:, None]
        label[mask] = len(STUFF_CLASSES) + k
        things.append(mask)
    if layout is not None:
        layout.update(regions=regions, things=things)

    img += rng.normal(0, _NOISE_STD, img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), label
