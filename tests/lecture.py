"""The lecture's programs, built twice: in reglab and in real Keras 3, with the same weights."""

import numpy as np
import torch
from sklearn.datasets import make_blobs

import reglab
from reglab import L1, L2, KLSparsity, Lp
from reglab.models import mlp

SCHEDULES = {1: (0.001, 20), 2: (0.005, 20), 3: (0.005, 50), 4: (0.001, 20), 5: (0.001, 20), 6: (0.001, 20),
             7: (0.001, 50)}  # program -> (learning rate, batch size)
R_LIST = [1, -1, 2, 2, 12, 2, 1, 2, -1, 2, -1, -1]  # the lecture's r_list, made explicit for 12 tensors


def blobs(seed=0):
    x, y = make_blobs(n_samples=300, n_features=2, centers=[[0.0, 0.0], [0.5, 0.1]], cluster_std=0.25,
                      center_box=(-1.0, 1.0), random_state=seed)
    y = y.reshape(-1, 1).astype("float32")
    return x[:225], y[:225], x[225:], y[225:]


def lecture_layers(program):
    relu = "relu"
    if program == 1:
        return [dict(units=32, activation=relu) for _ in range(5)] + [dict(units=1, activation="sigmoid")]
    if program == 2:
        L1_, L2_, L12 = L1(0.001), L2(0.001), reglab.L1L2(0.001)
        pairs = [(L1_, L1_), (L2_, L2_), (L12, L12), (L1_, L12), (L12, L2_)]
        hidden = [dict(units=32, activation=relu, kernel_regularizer=k, bias_regularizer=b) for k, b in pairs]
        return hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L12, bias_regularizer=L2_)]
    if program == 3:
        r = Lp(3, 0.01)
        return [dict(units=32, activation=relu, kernel_regularizer=r, bias_regularizer=r) for _ in range(5)] + [
            dict(units=1, activation="sigmoid", kernel_regularizer=r, bias_regularizer=r)]
    if program in (4, 5):
        before = program == 5
        return [dict(units=32, activation=relu, activity_regularizer=L1(0.01), activity_before_activation=before)
                for _ in range(5)] + [dict(units=1, activation="sigmoid")]
    if program == 6:
        hidden = [dict(units=32, activation=relu, kernel_regularizer=L2(0.001), bias_regularizer=L2(0.001),
                       activity_regularizer=L1(0.001)) for _ in range(5)]
        return hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L2(0.001), bias_regularizer=L2(0.001))]
    if program == 7:
        hidden = [dict(units=32, activation=relu, activity_regularizer=L2(0.01)) for _ in range(4)]
        return hidden + [dict(units=32, activation=relu, activity_regularizer=KLSparsity(0.05, 0.1)),
                         dict(units=1, activation="sigmoid")]
    raise ValueError(program)


def reglab_program(program, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = mlp(2, lecture_layers(program)).to(dtype)
    if program == 1:
        loss = reglab.RegularizedLoss(reglab.losses.LogEpsBinaryCrossentropy(1e-6), model, R_LIST, strength=0.001)
    else:
        loss = "binary_crossentropy"
    return model, loss


def keras_custom_regularizers(keras):
    """The lecture's custom Keras regularizers, in Keras 3 ops: program 3's L3 and program 7's KL."""
    ops = keras.ops

    class RegL3(keras.regularizers.Regularizer):
        def __init__(self, lam):
            self.R = lam

        def __call__(self, x):
            return self.R * ops.sum(ops.power(ops.abs(x), 3))

    class KLLoss(keras.regularizers.Regularizer):
        def __init__(self, lam, rho):
            self.R, self.rho = lam, rho

        def __call__(self, q):
            rho_hat = ops.clip(ops.mean(q, axis=0), 1e-6, 0.99999)
            kl = self.rho * ops.log(self.rho / rho_hat) + (1 - self.rho) * ops.log((1 - self.rho) / (1 - rho_hat))
            return self.R * ops.sum(kl)

    return RegL3, KLLoss


def keras_program(keras, program, model):
    """The lecture's Keras program (custom L3/KL regularizers and regularized loss in Keras ops),
    with the weights of the reglab ``model``."""
    RegL3, KLLoss = keras_custom_regularizers(keras)

    def conv(r):
        if r is None:
            return None
        if isinstance(r, Lp):
            return RegL3(r.factor)
        if isinstance(r, KLSparsity):
            return KLLoss(r.strength, r.rho)
        return keras.regularizers.deserialize({"class_name": type(r).__name__, "config": r.get_config()})

    x = inp = keras.Input((2,))
    for spec in lecture_layers(program):
        kw = dict(kernel_regularizer=conv(spec.get("kernel_regularizer")), bias_regularizer=conv(spec.get("bias_regularizer")),
                  activity_regularizer=conv(spec.get("activity_regularizer")))
        if spec.get("activity_before_activation"):
            x = keras.layers.Dense(spec["units"], **kw)(x)
            x = keras.layers.Activation(spec["activation"])(x)
        else:
            x = keras.layers.Dense(spec["units"], activation=spec["activation"], **kw)(x)
    kmodel = keras.Model(inp, x)
    dense = [m for m in model if isinstance(m, reglab.Dense)]
    kdense = [layer for layer in kmodel.layers if layer.__class__.__name__ == "Dense"]
    for d, k in zip(dense, kdense):
        k.set_weights([d.weight.detach().cpu().numpy().T.astype(k.kernel.dtype), d.bias.detach().cpu().numpy().astype(k.kernel.dtype)])
    lr, _ = SCHEDULES[program]
    ops = keras.ops
    if program == 1:
        params = kmodel.trainable_variables

        class RegLoss(keras.losses.Loss):
            def call(self, y, y_pred):
                e = 1e-6
                bce = -ops.mean(y * ops.log(y_pred + e) + (1.0 - y) * ops.log(1.0 - y_pred + e))
                reg = 0
                for i, p in zip(R_LIST, params):
                    if i in (1, 12):
                        reg += ops.sum(ops.abs(p))
                    if i in (2, 12):
                        reg += ops.sum(ops.square(p))
                return bce + 0.001 * reg

        loss = RegLoss()
    else:
        loss = "binary_crossentropy"
    kmodel.compile(loss=loss, optimizer=keras.optimizers.Adam(learning_rate=lr))
    return kmodel


def np_dtype(dtype):
    return np.float64 if dtype == torch.float64 else np.float32
