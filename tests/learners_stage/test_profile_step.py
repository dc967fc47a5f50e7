"""tools/profile_step.py: op categories from real op names, and a real TensorFlow profile read back by category."""

import importlib.util
import sys

import keras
import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def profiler():
    sys.path.insert(0, str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location("profile_step", REPO / "tools" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, op_type, category", [
    ("gradient_tape/m/densenet161_block1_layer1_conv1_1/convolution/Conv2DBackpropFilter",
     "_MklNativeConv2DBackpropFilter", "conv backward"),
    ("m/densenet161_block1_layer1_conv1_1/convolution", "_MklNativeConv2D", "conv forward"),
    ("gradient_tape/m/densenet161_block1_layer1_bn1_1/batchnorm/mul_1/Mul", "Mul", "batch norm backward"),
    ("m/densenet161_block1_layer1_bn1_1/moments/mean", "Mean", "batch norm forward"),
    ("m/block_bn_1/FusedBatchNormV3", "_MklNativeFusedBatchNormEx", "batch norm forward"),
    ("gradient_tape/m/block_bn_1/FusedBatchNormGradV3", "_MklNativeFusedBatchNormGradV3", "batch norm backward"),
    ("adam_w/AssignSubVariableOp_3", "AssignSubVariableOp", "optimizer"),
    ("m/densenet161_block1_layer1_concat_1/concat", "ConcatV2", "concat"),
    ("gradient_tape/m/layer_relu_1/ReluGrad", "ReluGrad", "activation"),
    ("AddN_4", "AddN", "other"),
])
def test_tensorflow_categories(profiler, name, op_type, category):
    assert profiler.tensorflow_category(name, op_type) == category


@pytest.mark.parametrize("name, in_optimizer, category", [
    ("aten::convolution_backward", False, "conv backward"), ("aten::mkldnn_convolution", False, "conv forward"),
    ("aten::native_batch_norm_backward", False, "batch norm backward"),
    ("aten::native_batch_norm", False, "batch norm forward"), ("aten::cat", False, "concat"),
    ("aten::threshold_backward", False, "activation"), ("aten::add_", True, "optimizer"),
    ("aten::add_", False, "other"),
])
def test_torch_categories(profiler, name, in_optimizer, category):
    assert profiler.torch_category(name, in_optimizer) == category


def test_a_real_tensorflow_profile_is_read_back_by_category(profiler):
    from tfflannel.models.batch_norm import BatchNormalization

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(BatchNormalization(name="bn")(x))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    images, labels = np.zeros((2, 16, 16, 3), np.float32), np.zeros(2, np.int64)
    profile = profiler.profile_tensorflow_step(lambda: model.train_on_batch(images, labels))
    assert profile["step_ms"] > 0
    for category in ("conv forward", "conv backward", "batch norm forward", "batch norm backward", "optimizer"):
        assert profile["categories"].get(category, 0.0) > 0.0, category
    assert any("FusedBatchNorm" in op for op in profile["ops"])
