"""reglab.fit reproduces Keras 3's fit numbers for the lecture's programs (same weights, same batches)."""

import numpy as np
import pytest
import torch

import reglab

from .lecture import SCHEDULES, blobs, keras_program, np_dtype, reglab_program


def both(keras, program, dtype, epochs):
    keras.config.set_floatx("float64" if dtype == torch.float64 else "float32")
    try:
        xtr, ytr, xte, yte = blobs()
        model, loss = reglab_program(program, dtype=dtype)
        kmodel = keras_program(keras, program, model)
        lr, bs = SCHEDULES[program]
        nd = np_dtype(dtype)
        kh = kmodel.fit(xtr.astype(nd), ytr.astype(nd), validation_data=(xte.astype(nd), yte.astype(nd)), epochs=epochs,
                        batch_size=bs, shuffle=False, verbose=0).history
        h = reglab.fit(model, xtr, ytr, loss=loss, optimizer={"name": "adam", "learning_rate": lr}, epochs=epochs,
                       batch_size=bs, validation_data=(xte, yte), shuffle=False, progress=False)
    finally:
        keras.config.set_floatx("float64")
    return h, kh


@pytest.mark.parametrize("program", [1, 2, 5, 6, 7])
def test_float64_parity_over_5_epochs(keras, program):
    h, kh = both(keras, program, torch.float64, 5)
    np.testing.assert_allclose(h["loss"], kh["loss"], rtol=1e-6)
    np.testing.assert_allclose(h["val_loss"], kh["val_loss"], rtol=1e-6)


@pytest.mark.parametrize("program", [1, 2, 5, 6, 7])
def test_float32_parity_over_4_epochs(keras, program):
    h, kh = both(keras, program, torch.float32, 4)
    np.testing.assert_allclose(h["loss"], kh["loss"], rtol=1e-4)
    np.testing.assert_allclose(h["val_loss"], kh["val_loss"], rtol=1e-4)
