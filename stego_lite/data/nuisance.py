"""SynthStuff's `nuisance` switch: per-image variation that carries no class but moves the features.

Natural photos vary by much more than their classes: distance (texture scale), light, exposure, white
balance, focus, sensor noise. A frozen backbone's features follow these, and its main directions of
variance need not follow the classes (Koenig et al. Fig. 3: DINO's variance is spread over hundreds of
components). With the switch on, a SynthStuff image gets one draw of each of these, the same for all its
pixels and independent of its labels:

    zoom        every texture's period is multiplied by it (the layout is not: labels do not change)
    contrast    the image is scaled about its mean (low contrast: the noise below counts more)
    cast        a gain per colour channel (white balance)
    light       a multiplicative illumination ramp across the image, in any direction
    blur        a Gaussian blur (focus), sigma in px at the 96-px design size
    noise       additive Gaussian sensor noise per pixel, in [0, 1] intensity units

The draws come from their own random stream, so an image's labels are exactly those of the same image
with the switch off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NUISANCE_VERSION = 1   # bump when RANGES or the application below changes, so old data are not reused
# The law: each factor uniform and independent in its range (zoom log-uniform).
RANGES = {"zoom": (0.7, 1.4), "contrast": (0.35, 1.0), "cast": (0.7, 1.3), "light": (0.0, 0.6),
          "blur": (0.0, 1.2), "noise": (0.0, 0.06)}


@dataclass(frozen=True)
class Nuisance:
    """One image's nuisance draw."""

    zoom: float                           # texture periods x zoom
    contrast: float                       # factor on the deviation from the image mean
    cast: tuple[float, float, float]      # gain of R, G, B
    light: float                          # illumination ramp: factor 1 - light .. 1 + light across the image
    light_angle: float                    # its direction, radians
    blur: float                           # Gaussian sigma, px at the 96-px design size
    noise: float                          # noise std, in [0, 1] intensity units

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Nuisance:
        """One draw from the law (RANGES); nothing depends on the image."""
        r = RANGES
        return cls(zoom=float(np.exp(rng.uniform(*np.log(r["zoom"])))), contrast=float(rng.uniform(*r["contrast"])),
                   cast=tuple(rng.uniform(*r["cast"], 3).tolist()), light=float(rng.uniform(*r["light"])),
                   light_angle=float(rng.uniform(0, 2 * np.pi)), blur=float(rng.uniform(*r["blur"])),
                   noise=float(rng.uniform(*r["noise"])))

    def apply(self, image: np.ndarray, rng: np.random.Generator, design_size: int = 96) -> np.ndarray:
        """The photometric part on a rendered image: (S, S, 3) uint8 -> (S, S, 3) uint8; `rng` draws the noise.
        (The zoom acts inside the renderer: `scenes.render_scene(..., texture_zoom=zoom)`.)"""
        size = image.shape[0]
        x = image.astype(np.float64) / 255
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = (mean + self.contrast * (x - mean)) * np.asarray(self.cast)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5                 # (S, S) in [-0.5, 0.5]
        ramp = (np.cos(self.light_angle) * xx + np.sin(self.light_angle) * yy) / np.sqrt(0.5)   # in [-1, 1]
        x = x * (1 + self.light * ramp)[:, :, None]
        if self.blur > 0:
            x = ndimage.gaussian_filter(x, sigma=(self.blur * size / design_size,) * 2 + (0,), mode="reflect")
        x = x + rng.normal(0, self.noise, x.shape)
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
