"""Fine-tunes the last blocks of a Keras MobileNetV2 classifier on cached activations.

The backbone up to `CUT` (block 14's output, 7x7x160 for a 224x224 input) runs once per training
crop; its activations are cached. Blocks 15 and 16, the final 1x1 convolution and the new head
are then trained on that cache, so an epoch costs a fraction of a full forward and backward
pass. Batch norms stay frozen (inference mode, their statistics as the package trained them):
with a few thousand crops their statistics would only get noisier.

The trained layers are the model's own, so `tf.keras.Model(old.input, head(flatten))` carries
the new weights for export. Used by train_mask_classifier.py.
"""
import hashlib

import numpy as np

# Where the frozen part ends for each first tuned block, and MobileNetV2's skip connections.
CUTS = {13: "block_12_add", 14: "block_13_project_BN", 15: "block_14_add"}
RESIDUAL = {13: False, 14: True, 15: True, 16: False}


def tune_from(first):
    """Sets FIRST (the first tuned block), CUT (where the cached activations are taken) and
    TUNED (the trained layers' name prefixes): blocks `first`..16 and Conv_1. mask-v2 tunes from
    block 15 (train_mask_classifier.py --first-block). From block 13 the cache holds 14x14x96
    activations per crop and an epoch costs about 1.7 times as much; tried for mask-v2 and not
    kept: see models/README.md."""
    global CUT, FIRST, TUNED
    CUT, FIRST = CUTS[first], first
    TUNED = tuple(f"block_{b}" for b in range(first, 17)) + ("Conv_1",)


tune_from(15)
LEARNING_RATE, EPOCHS_MAX, BATCH = 1e-4, 12, 64


def front(old):
    """The frozen part: the classifier's input to `CUT`."""
    import tensorflow as tf

    return tf.keras.Model(old.input, old.get_layer(CUT).output)


def tail(old, head):
    """`CUT` activations -> blocks FIRST..16 -> Conv_1 -> pooled features -> `head`, on the
    classifier's own layers (shared weights)."""
    import tensorflow as tf

    layer, names = old.get_layer, {l.name for l in old.layers}
    inp = tf.keras.Input(layer(CUT).output.shape[1:])
    x = inp
    for block in range(FIRST, 17):
        y = x
        for part in ("expand", "expand_BN", "expand_relu", "pad", "depthwise", "depthwise_BN",
                     "depthwise_relu", "project", "project_BN"):
            if f"block_{block}_{part}" in names:  # only the strided blocks (13) pad
                y = layer(f"block_{block}_{part}")(y)
        x = tf.keras.layers.Add()([x, y]) if RESIDUAL[block] else y
    for name in ("Conv_1", "Conv_1_bn", "out_relu", "average_pooling2d", "flatten"):
        x = layer(name)(x)
    return tf.keras.Model(inp, head(x))


def hold_out(groups):
    """The 10 % image-level hold-out of TRAIN the epoch count is picked on."""
    return np.array([int(hashlib.sha256(("hold" + g).encode()).hexdigest()[:8], 16) % 10 == 0
                     for g in groups])


def violation_f1(truth, predicted, violation):
    """F1 of the violation decision (argmax among `violation` labels) over crops."""
    t, p = np.isin(truth, violation), np.isin(predicted, violation)
    tp = float((t & p).sum())
    return 2 * tp / max(float(t.sum() + p.sum()), 1.0)


def fit_tail(old, start, make_head, seed, x, y, epochs, class_weight, validation=None, callbacks=()):
    """From the weights `start`, trains the tuned layers and a new head on activations `x`
    (labels `y`). Returns (head, the tail model, Keras history)."""
    import tensorflow as tf

    old.set_weights(start)
    head = make_head(old, seed)
    model = tail(old, head)
    for layer in old.layers:
        layer.trainable = (layer.name.startswith(TUNED)
                           and not isinstance(layer, tf.keras.layers.BatchNormalization))
    model.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy")
    hist = model.fit(x.astype(np.float32), y, validation_data=validation, epochs=epochs,
                     batch_size=BATCH, class_weight=class_weight, verbose=0, shuffle=True,
                     callbacks=list(callbacks))
    return head, model, hist


def train(old, make_head, fx, fy, groups, seed, class_weight, originals, violation):
    """Picks the epoch count on the hold-out, then refits on all of TRAIN from the same start.
    The pick is the epoch with the best violation F1 on the hold-out's original crops (no flips or
    jitter), the decision the rule makes; the hold-out loss is printed too. A first build picked
    the epoch of least hold-out loss, which on this small hold-out jumps from epoch to epoch
    (0.34, 0.73, 0.50) and chose epoch 3, a model between the package head and the tuned one
    (see measurements/mask_v2.md). Returns (head, epochs); `old`'s tuned layers keep the
    refit's weights."""
    import tensorflow as tf

    start = [w.copy() for w in old.get_weights()]
    hold = hold_out(groups)
    scored = hold & originals
    f1s = []

    class Score(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            p = self.model.predict(fx[scored].astype(np.float32), batch_size=256, verbose=0)
            f1s.append(violation_f1(fy[scored], p.argmax(1), violation))

    def fit(rows, epochs, validation=None, callbacks=()):
        head, _, hist = fit_tail(old, start, make_head, seed, fx[rows], fy[rows], epochs,
                                 class_weight, validation, callbacks)
        return head, hist

    _, hist = fit(~hold, EPOCHS_MAX, (fx[hold].astype(np.float32), fy[hold]), [Score()])
    best = int(np.argmax(f1s)) + 1
    print("hold-out loss by epoch: " + " ".join(f"{l:.3f}" for l in hist.history["val_loss"]))
    print("hold-out violation F1 by epoch: " + " ".join(f"{f:.3f}" for f in f1s))
    print(f"best epoch {best} (violation F1 {f1s[best - 1]:.3f} on {int(scored.sum())} crops); "
          f"class weights {class_weight}")
    head, _ = fit(np.ones(len(fy), bool), best)
    return head, best
