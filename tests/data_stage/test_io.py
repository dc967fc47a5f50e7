"""read_image: every format a user may bring decodes to (H, W) uint8, or fails by name."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tfflannel.data.io import (
    MAX_MEGAPIXELS,
    MIN_SIDE,
    ImageReadError,
    image_limits,
    read_image,
    set_image_limits,
    to_uint8,
)


@pytest.fixture(autouse=True)
def small_images_allowed():
    """The format tests use tiny images; the size limits have their own tests below."""
    set_image_limits(min_side=1)
    yield
    set_image_limits()


@pytest.fixture
def gradient():
    return np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))


def test_png_8bit_roundtrip(tmp_path, gradient):
    path = tmp_path / "a.png"
    Image.fromarray(gradient).save(path)
    image, meta = read_image(path)
    assert image.dtype == np.uint8 and image.shape == gradient.shape
    np.testing.assert_array_equal(image, gradient)
    assert meta["format"] == "PNG" and meta["path"] == str(path)


def test_png_16bit_scaled_to_full_range(tmp_path):
    values = np.linspace(1000, 4000, 64 * 32).reshape(32, 64).astype(np.uint16)
    path = tmp_path / "b16.png"
    Image.fromarray(values).save(path)
    image, meta = read_image(path)
    assert meta["mode"].startswith("I")
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert np.all(np.diff(image.astype(int), axis=1) >= 0), "monotone ramp must stay monotone"


def test_rgba_composited_on_black_then_gray(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:5, :, 3] = 255  # top opaque, bottom transparent
    path = tmp_path / "c.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image, _ = read_image(path)
    assert image.shape == (10, 10)
    assert np.all(image[:5] == 200) and np.all(image[5:] == 0)


def test_rgb_jpeg_to_gray(tmp_path, gradient):
    rgb = np.stack([gradient] * 3, axis=-1)
    path = tmp_path / "d.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    image, meta = read_image(path)
    assert meta["format"] == "JPEG" and image.ndim == 2
    assert np.abs(image.astype(int) - gradient).max() <= 8


def _write_dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome2_with_rescale(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 62.5).astype(np.uint16), (16, 1))
    path = tmp_path / "x.dcm"
    _write_dicom(path, pixels, slope=2.0, intercept=-100.0)
    image, meta = read_image(path)
    assert meta["format"] == "DICOM" and meta["mode"] == "MONOCHROME2"
    assert image.shape == pixels.shape and image[0, 0] == 0 and image[0, -1] == 255
    assert np.all(np.diff(image[0].astype(int)) >= 0)


def test_dicom_monochrome1_inverted(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 62.5).astype(np.uint16), (16, 1))
    path = tmp_path / "m1.dcm"
    _write_dicom(path, pixels, photometric="MONOCHROME1")
    image, _ = read_image(path)
    assert image[0, 0] == 255 and image[0, -1] == 0, "MONOCHROME1: high values are dark"


def test_dicom_voi_window_clips(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 62.5).astype(np.uint16), (16, 1))
    path = tmp_path / "w.dcm"
    _write_dicom(path, pixels, window=(2000, 1000))
    image, _ = read_image(path)
    below, above = pixels[0] < 1500, pixels[0] > 2500
    assert np.all(image[0][below] == 0) and np.all(image[0][above] == 255)


def test_dicom_detected_without_suffix(tmp_path):
    path = tmp_path / "nosuffix"
    _write_dicom(path, np.full((8, 8), 7, np.uint16))
    assert read_image(path)[1]["format"] == "DICOM"


@pytest.mark.parametrize("case", ["missing", "empty", "truncated_png", "truncated_jpeg", "not_an_image", "bad_dicom"])
def test_bad_files_raise_with_name_and_reason(tmp_path, gradient, case):
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case in ("truncated_png", "truncated_jpeg"):
        fmt = "PNG" if case == "truncated_png" else "JPEG"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_an_image":
        path.write_text("hello, I am text")
    elif case == "bad_dicom":
        path = tmp_path / "bad.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert info.value.reason


def test_real_sample_image_reads(sample_cls_dir):
    path = next((sample_cls_dir / "covid19").glob("*.png"))
    image, meta = read_image(path)
    assert image.dtype == np.uint8 and max(image.shape) == 512 and image.std() > 10


def test_to_uint8_constant_is_zero():
    assert to_uint8(np.full((3, 3), 7.0)).max() == 0


def write_png_header(path, width, height):
    """A valid PNG signature and IHDR claiming width x height 8-bit gray, then one tiny IDAT: a decompression
    bomb's header (a real bomb's IDAT would inflate to width x height bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_limits_default_to_100_megapixels_and_64_px():
    set_image_limits()
    assert image_limits() == {"max_megapixels": MAX_MEGAPIXELS, "min_side": MIN_SIDE} == \
        {"max_megapixels": 100.0, "min_side": 64}


def test_decompression_bomb_png_is_an_image_read_error(tmp_path):
    set_image_limits()
    path = tmp_path / "bomb.png"
    write_png_header(path, 14000, 14000)           # 196 MP: beyond Pillow's own 179 MP hard limit too
    with pytest.raises(ImageReadError, match=r"14000x14000 pixels \(196 megapixels\) exceeds the limit of 100") as info:
        read_image(path)
    assert info.value.reason.startswith("14000x14000 pixels") and "corrupt" not in str(info.value)
    path = tmp_path / "bomb_120mp.png"
    write_png_header(path, 12000, 10000)           # between Pillow's warning (89 MP) and error (179 MP) thresholds
    with pytest.raises(ImageReadError, match="data.max_megapixels"):
        read_image(path)


def test_pixel_limit_is_configurable(tmp_path, gradient):
    path = tmp_path / "g.png"
    Image.fromarray(np.tile(gradient, (2, 2))).save(path)        # 96 x 128
    set_image_limits(max_megapixels=0.01)                        # 10,000 pixels
    with pytest.raises(ImageReadError, match="128x96 pixels"):
        read_image(path)
    assert read_image(path, limits={"max_megapixels": 0.1})[0].shape == (96, 128)
    set_image_limits()
    assert read_image(path)[0].shape == (96, 128)


def test_dicom_size_checked_before_pixels_decode(tmp_path):
    set_image_limits(max_megapixels=0.0005)                      # 500 pixels
    path = tmp_path / "big.dcm"
    _write_dicom(path, np.zeros((32, 32), np.uint16))
    with pytest.raises(ImageReadError, match="32x32 pixels"):
        read_image(path)


@pytest.mark.parametrize("shape", [(40, 200), (200, 63), (8, 8)], ids=["short", "narrow", "thumbnail"])
def test_images_below_the_minimum_side_are_rejected_with_a_reason(tmp_path, shape):
    set_image_limits()
    path = tmp_path / "small.png"
    Image.fromarray(np.full(shape, 100, np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"smaller than the minimum side of 64 px \(data.min_side\)") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "corrupt" not in info.value.reason and str(path) not in info.value.reason
    dicom = tmp_path / "small.dcm"
    _write_dicom(dicom, np.full(shape, 100, np.uint16))
    with pytest.raises(ImageReadError, match="minimum side"):
        read_image(dicom)
    assert read_image(path, limits={"min_side": min(shape)})[0].shape == shape


def test_limits_reject_non_positive_values():
    with pytest.raises(ValueError, match="must be positive"):
        set_image_limits(max_megapixels=0)
