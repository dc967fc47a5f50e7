"""serving_default's header check (export/encoded_guard.py) applies the file readers' size rule, from PNG and JPEG
headers, and refuses other formats; no model needed."""

import io
import itertools

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfflannel.data.io import ImageReadError, check_image_size
from tfflannel.serving.encoded_guard import checked_encoded_images
from tfflannel.serving.serve_process import bomb_png

LIMITS = {"max_megapixels": 0.01, "min_side": 64}      # 10,000 pixels


def _guard(limits):
    return tf.function(lambda images: checked_encoded_images(images, limits),
                       input_signature=[tf.TensorSpec([None], tf.string)])


def _encoded(height, width, fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _declaring(fmt, height, width):
    """A small real file whose header declares height x width (PNG IHDR or JPEG SOF0 patched)."""
    data = bytearray(_encoded(8, 8, fmt))
    if fmt == "PNG":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    else:
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _refusal(guard, batch):
    try:
        guard(tf.constant(batch, tf.string))
    except tf.errors.InvalidArgumentError as error:
        return error.message
    return None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_graph_refuses_exactly_what_the_file_readers_refuse_with_their_message(fmt):
    guard = _guard(LIMITS)
    sides = (1, 63, 64, 65, 100, 156, 157, 1000)
    refused = 0
    for height, width in itertools.product(sides, sides):
        try:
            check_image_size("x", height, width, LIMITS)
            expected = None
        except ImageReadError as error:
            expected = error.reason
        message = _refusal(guard, [_encoded(100, 100, fmt), _declaring(fmt, height, width)])
        if expected is None:
            assert message is None, (height, width, message)
        else:
            refused += 1
            assert f"instance 1: {expected}]" in message, (height, width, message)
    assert 0 < refused < len(sides) ** 2
    assert "limit of 0.01 megapixels" in _refusal(guard, [_declaring(fmt, 100, 101)])
    assert "data.min_side" in _refusal(guard, [_declaring(fmt, 63, 100)])


def test_a_bomb_header_is_refused_and_good_bytes_pass_unchanged():
    guard = _guard({"max_megapixels": 100.0, "min_side": 64})
    good = [_encoded(80, 120, "PNG"), _encoded(100, 90, "JPEG")]
    assert [bytes(b) for b in guard(tf.constant(good)).numpy()] == good
    assert guard(tf.constant([], tf.string)).shape == (0,)
    message = _refusal(guard, [*good, bomb_png(20000)])
    assert "instance 2: 20000x20000 pixels (400 megapixels) exceeds the limit of 100 megapixels" in message
    assert "data.max_megapixels" in message
    huge = _declaring("PNG", 2**32 - 1, 2**32 - 1)          # no int64 overflow turns it into a small image
    assert "4294967295x4294967295 pixels" in _refusal(guard, [huge])


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_refused_not_guessed(fmt):
    message = _refusal(_guard(LIMITS), [_encoded(100, 100, fmt)])
    assert "instance 0: not a PNG or JPEG image (other formats are refused)" in message


def test_non_image_empty_and_broken_header_bytes_are_refused():
    guard = _guard(LIMITS)
    for data in (b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n"):
        assert "instance 0: not a PNG or JPEG image" in _refusal(guard, [data])
    assert "Invalid JPEG data" in _refusal(guard, [b"\xff\xd8\xff\xe0 broken"])
