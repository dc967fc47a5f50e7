"""read_image: every format a user may bring decodes to (H, W) uint8, or fails by name."""

import numpy as np
import pytest
from PIL import Image

from tfflannel.data.io import ImageReadError, read_image, to_uint8


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
