"""Random shifts of scikit-learn's 8x8 digits (they arrive flattened: 64 pixels of 0 to 16)."""

import torch
import torch.nn.functional as F


def shift(x, pixels=1):
    """The image moved by up to ``pixels`` in each direction (uniform, drawn from torch's generator,
    so that each model draws its own), the pixels that come in set to 0 (the background: the
    inputs are raw pixel values, not standardized per pixel, so a shifted stroke means what it
    means where it lands)."""
    side = int(round(x.numel() ** 0.5))
    img = x.reshape(1, 1, side, side)
    dy, dx = (torch.randint(-pixels, pixels + 1, (2,)) + pixels).tolist()
    padded = F.pad(img, (pixels, pixels, pixels, pixels))
    return padded[0, 0, dy:dy + side, dx:dx + side].reshape(x.shape)
