"""A small CNN for scikit-learn's 8x8 digits (inputs arrive flattened: 64 pixels)."""

from torch import nn


def build(input_shape, n_outputs, channels=8, hidden=32, dropout=0.0):
    """conv(3x3, channels) -> ReLU -> maxpool 2 -> conv(3x3, 2 channels) -> ReLU -> maxpool 2 ->
    dropout -> linear(hidden) -> ReLU -> dropout -> linear(n_outputs) logits."""
    side = int(round(input_shape[0] ** 0.5))
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(2 * channels * (side // 4) ** 2, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_outputs),
    )
