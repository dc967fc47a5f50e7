"""Refuse hostile encoded images inside the served graph, from their headers, before any pixel is decoded.

`serving_default` receives PNG/JPEG bytes from the network. Before `tf.io.decode_image` runs, each
instance's width and height are read from its header (PNG: the IHDR chunk, which the PNG standard puts
first; JPEG: the SOF marker, through `tf.image.extract_jpeg_shape`) and checked by
`tfflannel.data.io.size_violations`, the rule the command-line readers apply, with the limits recorded in
the export (`data.max_megapixels`, `data.min_side`). A 400 KB PNG that declares 20,000 x 20,000 pixels is
refused with an `InvalidArgumentError` naming the limit; it is never expanded to 400 MB. Bytes that are
neither PNG nor JPEG are refused, not guessed (`decode_image` would also take GIF and BMP).
"""

from __future__ import annotations

import string

import tensorflow as tf

from tfflannel.data.io import TOO_MANY_PIXELS, TOO_SMALL, size_violations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_HEADER_BYTES = 24          # PNG: 8-byte signature, IHDR length and type (8), width and height (8, big-endian)

NOT_AN_IMAGE = "not a PNG or JPEG image (other formats are refused)"

IMAGE_LIMITS_FILE = "image_limits.json"
"""In an export's `assets.extra/`: the `max_megapixels` and `min_side` its `serving_default` enforces."""


def format_message(template, **values):
    """`template.format(**values)` as a string tensor: tensors are written as decimal numbers, the rest as Python does.

    Args:
        template: str. A `str.format` template with named fields.
        **values: the fields; integer tensors or Python values (whose format spec applies).

    Returns:
        tf.Tensor. A scalar string.
    """
    parts = []
    for literal, field, spec, _ in string.Formatter().parse(template):
        parts.append(literal)
        if field is not None:
            value = values[field]
            parts.append(tf.strings.as_string(value) if tf.is_tensor(value) else format(value, spec))
    return tf.strings.join(parts)


def _big_endian(raw, start):
    """The unsigned 32-bit big-endian integer at raw[start:start + 4], as int64 (no sign or overflow surprises)."""
    return ((raw[start] * 256 + raw[start + 1]) * 256 + raw[start + 2]) * 256 + raw[start + 3]


def read_encoded_size(data):
    """Height and width of encoded image bytes, from the header only.

    Args:
        data: scalar tf.string. The encoded file.

    Returns:
        tuple: `(known, height, width)`: a bool tensor (PNG or JPEG signature found) and int64 sizes (0 when
        not known). A JPEG whose header cannot be parsed raises `InvalidArgumentError` when run.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, _HEADER_BYTES), b"\0" * _HEADER_BYTES]),
                             0, _HEADER_BYTES)
    is_png = tf.logical_and(tf.strings.substr(head, 0, 8) == PNG_SIGNATURE, tf.strings.substr(head, 12, 4) == b"IHDR")
    is_jpeg = tf.strings.substr(head, 0, 3) == JPEG_SIGNATURE
    raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def png_size():
        return _big_endian(raw, 20), _big_endian(raw, 16)

    def jpeg_size():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    def unknown_size():
        return tf.constant(0, tf.int64), tf.constant(0, tf.int64)

    height, width = tf.cond(is_png, png_size, lambda: tf.cond(is_jpeg, jpeg_size, unknown_size))
    return tf.logical_or(is_png, is_jpeg), height, width


def encoded_image_checks(data, index, limits):
    """Assertions that one instance is a PNG or JPEG within the size limits; run them before decoding.

    Args:
        data: scalar tf.string. The encoded file.
        index: scalar int tensor. Its position in the request, for the message.
        limits: dict. `max_megapixels` and `min_side`.

    Returns:
        list of ops: fail with `InvalidArgumentError` ("instance I: ...", naming the limit and its option).
    """
    known, height, width = read_encoded_size(data)
    prefix = format_message("instance {index}: ", index=index)
    known_check = tf.debugging.Assert(known, [tf.strings.join([prefix, NOT_AN_IMAGE])])
    with tf.control_dependencies([known_check]):
        rows, columns = tf.cast(height, tf.float64), tf.cast(width, tf.float64)    # no int64 overflow
        too_many_pixels, too_small = size_violations(rows, columns, limits)
        fields = dict(limits, height=height, width=width, megapixels=tf.cast(tf.round(rows * columns / 1e6), tf.int64))
        pixel_check = tf.debugging.Assert(tf.logical_not(too_many_pixels),
                                          [tf.strings.join([prefix, format_message(TOO_MANY_PIXELS, **fields)])])
        side_check = tf.debugging.Assert(tf.logical_not(too_small),
                                         [tf.strings.join([prefix, format_message(TOO_SMALL, **fields)])])
    return [known_check, pixel_check, side_check]


def checked_encoded_images(images, limits):
    """The batch of encoded images, released only after every instance passed `encoded_image_checks`.

    Args:
        images: (B,) tf.string. Encoded PNG/JPEG files.
        limits: dict. `max_megapixels` and `min_side`.

    Returns:
        tf.Tensor. `images` again, depending on all the checks: decode from it, never from the input.
    """
    def check(index):
        with tf.control_dependencies(encoded_image_checks(images[index], index, limits)):
            return tf.identity(images[index])

    return tf.map_fn(check, tf.range(tf.shape(images)[0]), fn_output_signature=tf.string)
