"""A density grid to a PNG: scale to 0..255, colour, encode with Pillow.

- ``levels(grid, scale)``: each cell's level 0..255, with ``t`` = the cell
  over the grid's maximum (``"linear"``) or ``log1p`` of both
  (``"log"``, the default: a few dense cells do not wash out the rest),
  level = ``floor(t * 255 + 0.5)``, computed in float64. An empty grid is
  all 0.
- ``colormap(name)``: 256 RGB colours: ``"heat"`` runs black, purple, red,
  orange, yellow to white (level 0, no points, is black); ``"grey"``
  is level = brightness (the PNG is then 8-bit greyscale, one byte a pixel).
"""

import io

import numpy as np
from PIL import Image

#: ``heat``'s stops: (level, R, G, B); linear between them.
HEAT_STOPS = [
    (0, 0, 0, 0),
    (40, 40, 10, 90),
    (100, 150, 20, 110),
    (160, 230, 60, 40),
    (210, 250, 170, 20),
    (255, 255, 255, 230),
]


def colormap(name="heat"):
    """The colour of each level 0..255: a ``(256, 3)`` uint8 array."""
    levels = np.arange(256, dtype=np.float64)
    if name == "grey":
        return np.repeat(levels.astype(np.uint8)[:, None], 3, axis=1)
    if name != "heat":
        raise ValueError("unknown colormap %r: give \"heat\" or \"grey\"" % (name,))
    stops = np.array(HEAT_STOPS, dtype=np.float64)
    channels = [np.interp(levels, stops[:, 0], stops[:, c]) for c in (1, 2, 3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def levels(grid, scale="log"):
    """Each cell's level 0..255 (uint8), as the module docs say."""
    g = np.asarray(grid, dtype=np.float64)
    top = g.max() if g.size else 0.0
    if not top > 0:
        return np.zeros(g.shape, dtype=np.uint8)
    g = np.maximum(g, 0.0)
    if scale == "log":
        t = np.log1p(g) / np.log1p(top)
    elif scale == "linear":
        t = g / top
    else:
        raise ValueError("unknown scale %r: give \"log\" or \"linear\"" % (scale,))
    return np.clip(np.floor(t * 255.0 + 0.5), 0, 255).astype(np.uint8)


def png(grid, scale="log", cmap="heat"):
    """The PNG of a grid whose row 0 is the image's top row."""
    lv = levels(grid, scale)
    # A 2-D uint8 array is an "L" (greyscale) image, (H, W, 3) an "RGB" one.
    image = Image.fromarray(lv if cmap == "grey" else colormap(cmap)[lv])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()

