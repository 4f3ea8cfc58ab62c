"""Semi-supervised GAN classifiers (Salimans et al. 2016, "Improved techniques for training
GANs"): ``sgan_cnn6`` and the test model ``sgan_tiny``.

The discriminator has K = 2 class logits ``l`` (benign, tumour) and an implicit K+1-th
"generated" class whose logit is fixed at 0, so ``D(x) = Z / (Z + 1)`` with
``Z = sum_k exp(l_k)``, i.e. ``D(x) = sigmoid(logsumexp(l))``. One train step:

* supervised: softmax cross-entropy over the K logits on the LABELLED rows only (label >= 0;
  unlabelled rows carry label -1 and weight 0), with the class sample weights;
* unsupervised: ``-log D(x)`` on every real row (labelled and unlabelled) and
  ``-log(1 - D(G(z)))`` on as many generated patches;
* generator: feature matching, ``|| mean f(x) - mean f(G(z)) ||^2`` on the discriminator's
  penultimate (Dense 256) features, with its own Adam.

The model object is a functional ``tf_keras.Model`` (patch -> ``tumour_probability``) whose
``train_step`` is the update above. ``tumour_probability = softmax(l)[1] = sigmoid(l_1 - l_0)``,
shape (batch, 1), so validation, export (the IR holds only this classifier path), the
predictor and serving treat it like every other model. The generator and its optimizer are
attributes of the model, so ``tf.train.Checkpoint(model=...)`` holds them.

Distribution (MultiWorkerMirroredStrategy): gradients are SUM-all-reduced, so each replica's
losses are divided by GLOBAL quantities (all-reduced row counts and labelled weight), which
makes the summed gradient that of the global-batch loss. Feature matching compares
per-replica feature means and is averaged over replicas (a nonlinear function of the batch
mean has no exact per-replica split).

TensorFlow is imported inside the builders only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from patchray.errors import ConfigError
from patchray.models.keras_compat import load_keras, load_tensorflow
from patchray.models.registry import (
    OUTPUT_NAME,
    check_int,
    check_rate,
    check_width,
    patch_inputs,
    register_model,
    widen,
)
from patchray.models.small_cnns import CNN6_MIN_INPUT, cnn6_features

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tf_keras

NUM_CLASSES = 2  # K real classes: benign (0), tumour (1); "generated" is the implicit K+1-th
LOGITS_NAME = "class_logits"
FEATURES_NAME = "features"  # the discriminator layer feature matching compares


def _check_float(model: str, param: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{param} for model {model!r} must be a number > 0, got {value!r}")
    return float(value)


def _check_float_precision(model: str) -> None:
    keras = load_keras()
    policy = keras.mixed_precision.global_policy().name
    if policy != "float32":
        raise ConfigError(
            f"model {model!r} trains in float32 only (global policy is {policy!r}); set "
            "train.mixed_precision=false")


def classifier_head(logits: Any) -> Any:
    """``tumour_probability`` from the K=2 logits: ``softmax(l)[:, 1] == sigmoid(l1 - l0)``,
    shape (batch, 1), float32, in one named sigmoid layer as the registry contract asks."""
    keras = load_keras()
    diff = keras.layers.Dense(1, use_bias=False, trainable=False, dtype="float32",
                              kernel_initializer=keras.initializers.Constant([[-1.0], [1.0]]),
                              name="logit_difference")(logits)
    return keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(diff)


def build_generator(*, input_size: int, latent_dim: int, width: float, name: str) -> Any:
    """A small DCGAN generator: z -> Dense -> (base, base, C) -> stride-2 Conv2DTranspose
    (BN, ReLU) blocks -> Conv 3x3 sigmoid in [0, 1], centre-cropped to ``input_size`` (the
    upsampling makes ``base * 2**n`` pixels, >= input_size, e.g. 56 for 50)."""
    keras = load_keras()
    layers = keras.layers
    ups = 3 if input_size >= 16 else 1
    base = -(-input_size // 2**ups)
    channels = [widen(c, width) for c in (128, 64, 32)[-ups:]] if ups == 3 else [widen(32, width)]
    z = keras.Input(shape=(latent_dim,), dtype="float32", name="z")
    x = layers.Dense(base * base * channels[0] * 2, use_bias=False, name="g_project")(z)
    x = layers.BatchNormalization(name="g_project_bn")(x)
    x = layers.ReLU(name="g_project_relu")(x)
    x = layers.Reshape((base, base, channels[0] * 2), name="g_reshape")(x)
    for i, c in enumerate(channels, start=1):
        x = layers.Conv2DTranspose(c, 4, strides=2, padding="same", use_bias=False,
                                   name=f"g_deconv{i}")(x)
        x = layers.BatchNormalization(name=f"g_bn{i}")(x)
        x = layers.ReLU(name=f"g_relu{i}")(x)
    x = layers.Conv2D(3, 3, padding="same", activation="sigmoid", dtype="float32",
                      name="g_pixels")(x)
    extra = base * 2**ups - input_size
    if extra:
        x = layers.Cropping2D(((extra // 2, extra - extra // 2),) * 2, name="g_crop")(x)
    return keras.Model(z, x, name=name)


def _sgan_class() -> type:
    """The SGAN model class (defined lazily: it subclasses ``tf_keras.Model``)."""
    global _SGAN_CLASS
    if _SGAN_CLASS is not None:
        return _SGAN_CLASS
    keras = load_keras()
    tf = load_tensorflow()

    class SemiSupervisedGAN(keras.Model):
        """Functional patch -> tumour_probability classifier with an SGAN ``train_step``."""

        def __init__(self, inputs: Any, outputs: Any, *, discriminator: Any, generator: Any,
                     latent_dim: int, unsupervised_weight: float,
                     generator_learning_rate: float | None, name: str) -> None:
            super().__init__(inputs=inputs, outputs=outputs, name=name)
            self.discriminator = discriminator  # patch -> [class logits, features]
            self.generator = generator
            self.latent_dim = latent_dim
            self.unsupervised_weight = unsupervised_weight
            self.generator_learning_rate = generator_learning_rate
            self.generator_optimizer: Any = None
            self._trackers = {k: keras.metrics.Mean(name=k) for k in
                              ("loss", "supervised_loss", "unsupervised_loss", "generator_loss")}

        def compile(self, optimizer: Any = "adam", *args: Any, **kwargs: Any) -> None:
            """Also creates the generator's Adam (so under the caller's strategy scope):
            ``generator_learning_rate`` or the discriminator's, beta_1 = 0.5 (Salimans)."""
            super().compile(optimizer, *args, **kwargs)
            lr = self.generator_learning_rate
            if lr is None:
                lr = float(keras.backend.get_value(self.optimizer.learning_rate))
            self.generator_optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=0.5)

        @property
        def metrics(self) -> list[Any]:
            return list(self._trackers.values())

        def losses_on(self, x: Any, y: Any, w: Any, z: Any, training: bool = True) -> dict:
            """The SGAN losses of one (per-replica) batch; ``y`` -1 marks unlabelled rows.

            Each is this replica's share of the global-batch loss (see the module docstring):
            summed over replicas it is the loss of the whole global batch."""
            ctx = tf.distribute.get_replica_context()
            replicas = tf.cast(ctx.num_replicas_in_sync, tf.float32)
            y = tf.reshape(tf.cast(y, tf.float32), [-1])
            w = tf.ones_like(y) if w is None else tf.reshape(tf.cast(w, tf.float32), [-1])
            labelled = y >= 0.0
            sw = tf.where(labelled, w, tf.zeros_like(w))
            rows = tf.cast(tf.shape(y)[0], tf.float32)
            global_rows, global_sw = tf.unstack(
                ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([rows, tf.reduce_sum(sw)])))

            fake = self.generator(z, training=training)
            logits_real, feat_real = self.discriminator(x, training=training)
            # Generated patches must not move BatchNorm's inference statistics (validation
            # and serving see real patches only): keep them and put them back after the pass.
            stats = [v for v in self.discriminator.non_trainable_variables
                     if "moving_" in v.name]
            kept = [tf.identity(v) for v in stats]
            with tf.control_dependencies(kept):
                logits_fake, feat_fake = self.discriminator(fake, training=training)
            with tf.control_dependencies([logits_fake, feat_fake]):
                restored = [v.assign(k) for v, k in zip(stats, kept)]
            logits_real = tf.cast(logits_real, tf.float32)
            logits_fake = tf.cast(logits_fake, tf.float32)

            target = tf.cast(tf.where(labelled, y, tf.zeros_like(y)), tf.int32)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits_real)
            supervised = tf.math.divide_no_nan(tf.reduce_sum(sw * ce), global_sw)
            lse_real = tf.reduce_logsumexp(logits_real, axis=1)
            lse_fake = tf.reduce_logsumexp(logits_fake, axis=1)
            # -log D(x) = softplus(-lse), -log(1 - D(G(z))) = softplus(lse).
            unsupervised = 0.5 * (tf.reduce_sum(tf.nn.softplus(-lse_real))
                                  + tf.reduce_sum(tf.nn.softplus(lse_fake))) / global_rows
            fm = tf.reduce_mean(tf.square(tf.reduce_mean(tf.stop_gradient(feat_real), axis=0)
                                          - tf.reduce_mean(feat_fake, axis=0)))
            with tf.control_dependencies(restored):
                total = supervised + self.unsupervised_weight * unsupervised
            return {"loss": total, "supervised_loss": supervised,
                    "unsupervised_loss": unsupervised, "generator_loss": fm / replicas,
                    "replicas": replicas}

        def train_step(self, data: Any) -> dict[str, Any]:
            x, y, w = keras.utils.unpack_x_y_sample_weight(data)
            z = tf.random.normal((tf.shape(x)[0], self.latent_dim))
            with tf.GradientTape(persistent=True) as tape:
                out = self.losses_on(x, y, w, z)
            self.optimizer.minimize(out["loss"], self.discriminator.trainable_variables,
                                    tape=tape)
            self.generator_optimizer.minimize(out["generator_loss"],
                                              self.generator.trainable_variables, tape=tape)
            del tape
            for k, tracker in self._trackers.items():
                # The mean over replicas of these shares, times replicas, is the global loss.
                tracker.update_state(out[k] * out["replicas"])
            return {k: t.result() for k, t in self._trackers.items()}

    _SGAN_CLASS = SemiSupervisedGAN
    return SemiSupervisedGAN


_SGAN_CLASS: type | None = None


def assemble(*, name: str, inputs: Any, features: Any, logits: Any, generator: Any,
             latent_dim: int, unsupervised_weight: float,
             generator_learning_rate: float | None) -> "tf_keras.Model":
    """The SGAN model from a discriminator graph (``inputs`` -> ``features``, ``logits``)."""
    keras = load_keras()
    discriminator = keras.Model(inputs, [logits, features], name=f"{name}_discriminator")
    cls = _sgan_class()
    return cls(inputs, classifier_head(logits), discriminator=discriminator, generator=generator,
               latent_dim=latent_dim, unsupervised_weight=unsupervised_weight,
               generator_learning_rate=generator_learning_rate, name=name)


@register_model(
    "sgan_cnn6",
    family="small_cnn",
    min_input_size=CNN6_MIN_INPUT,
    semi_supervised=True,
    description="Semi-supervised GAN (Salimans 2016): CNN-6L discriminator with 2 class logits "
                "+ implicit 'generated' class, DCGAN generator, feature matching",
)
def build_sgan_cnn6(
    *,
    name: str,
    input_size: int,
    dropout: float = 0.3,
    dense_dropout: float = 0.5,
    bn_momentum: float = 0.9,
    width: float = 1.0,
    latent_dim: int = 100,
    generator_width: float = 1.0,
    unsupervised_weight: float = 1.0,
    generator_learning_rate: float | None = None,
) -> "tf_keras.Model":
    """SGAN with cnn6's discriminator (its conv blocks and Dense-256-BN-ReLU, then 2 logits).

    ``latent_dim``: the generator's noise size; ``generator_width`` multiplies its filters;
    ``unsupervised_weight`` scales the real/fake loss against the supervised one;
    ``generator_learning_rate`` (default: train.learning_rate) is the generator Adam's."""
    dropout = check_rate(name, "dropout", dropout)
    dense_dropout = check_rate(name, "dense_dropout", dense_dropout)
    bn_momentum = check_rate(name, "bn_momentum", bn_momentum)
    width = check_width(name, width)
    latent_dim = check_int(name, "latent_dim", latent_dim, 1)
    generator_width = check_width(name, generator_width)
    unsupervised_weight = _check_float(name, "unsupervised_weight", unsupervised_weight)
    generator_learning_rate = _check_float(name, "generator_learning_rate",
                                           generator_learning_rate, allow_none=True)
    _check_float_precision(name)
    layers = load_keras().layers
    inputs, x = patch_inputs(input_size, CNN6_MIN_INPUT)
    x = cnn6_features(x, dropout=dropout, bn_momentum=bn_momentum, width=width)
    x = layers.Dense(widen(256, width), use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="fc_bn")(x)
    features = layers.ReLU(name=FEATURES_NAME)(x)
    x = layers.Dropout(dense_dropout, name="fc_dropout")(features)
    logits = layers.Dense(NUM_CLASSES, dtype="float32", name=LOGITS_NAME)(x)
    generator = build_generator(input_size=input_size, latent_dim=latent_dim,
                                width=generator_width, name=f"{name}_generator")
    return assemble(name=name, inputs=inputs, features=features, logits=logits,
                    generator=generator, latent_dim=latent_dim,
                    unsupervised_weight=unsupervised_weight,
                    generator_learning_rate=generator_learning_rate)


@register_model(
    "sgan_tiny",
    family="test",
    semi_supervised=True,
    description="Test model: SGAN with a Conv3x3(4)+GAP discriminator and a tiny generator",
)
def build_sgan_tiny(
    *, name: str, input_size: int, latent_dim: int = 8, unsupervised_weight: float = 1.0,
    generator_learning_rate: float | None = None,
) -> "tf_keras.Model":
    """Test model: Conv3x3(4)-BN-ReLU, GAP (the matched features), 2 logits; generator
    with one upsampling block of 8 filters."""
    latent_dim = check_int(name, "latent_dim", latent_dim, 1)
    unsupervised_weight = _check_float(name, "unsupervised_weight", unsupervised_weight)
    generator_learning_rate = _check_float(name, "generator_learning_rate",
                                           generator_learning_rate, allow_none=True)
    _check_float_precision(name)
    layers = load_keras().layers
    inputs, x = patch_inputs(input_size)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    features = layers.GlobalAveragePooling2D(name=FEATURES_NAME)(x)
    logits = layers.Dense(NUM_CLASSES, dtype="float32", name=LOGITS_NAME)(features)
    generator = build_generator(input_size=input_size, latent_dim=latent_dim, width=0.25,
                                name=f"{name}_generator")
    return assemble(name=name, inputs=inputs, features=features, logits=logits,
                    generator=generator, latent_dim=latent_dim,
                    unsupervised_weight=unsupervised_weight,
                    generator_learning_rate=generator_learning_rate)
