"""Decode pixel frames and write masked frames back, lossless.

Output transfer syntax (documented in docs/pixels.md):

* native little-endian input (Implicit/Explicit VR LE, Deflated) stays in its transfer syntax,
  same layout (including PlanarConfiguration), only the masked samples differ;
* native big-endian input is written as Explicit VR Little Endian (big endian is retired);
* compressed input (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE) is decoded
  with pydicom's pixel decoders (pylibjpeg plugins) and re-encoded as RLE Lossless with pydicom's
  own encoder (lossless, no extra native library to trust); when RLE cannot hold the data
  (more than 15 byte segments, e.g. 64-bit samples) it is written as Explicit VR Little Endian.
  Re-encoding a lossy JPEG with a lossy codec would degrade the image twice and could smear
  masked text back in; a lossless re-encode keeps exactly the pixels we checked.
* YCbCr input (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT) is converted to RGB by pydicom on decode
  and written as RGB with PlanarConfiguration 0 (sub-sampled YBR_FULL_422 cannot be written back
  unchanged once edited, and RGB is what every viewer shows anyway).

Frames are decoded, masked and encoded one at a time; see docs/pixels.md on memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RLELossless,
)

NATIVE_LE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
LOSSY_TS = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless)


class UnsupportedPixels(Exception):
    """Pixel data we cannot decode or re-encode safely; the caller quarantines (fail closed)."""

    def __init__(self, code: str):
        self.code = code
        super().__init__(code)


@dataclass(frozen=True)
class PixelInfo:
    rows: int
    cols: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int
    transfer_syntax: UID

    @property
    def native(self) -> bool:
        return not self.transfer_syntax.is_compressed

    @property
    def color(self) -> bool:
        return self.samples == 3


def pixel_info(ds: Dataset) -> PixelInfo:
    if "PixelData" not in ds:
        raise UnsupportedPixels("no-pixel-data")
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    if not ts:
        raise UnsupportedPixels("pixel-no-transfer-syntax")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return PixelInfo(
            rows=int(ds.Rows), cols=int(ds.Columns), samples=int(ds.get("SamplesPerPixel", 1) or 1),
            frames=max(frames, 1), bits_allocated=int(ds.BitsAllocated),
            bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            photometric=str(ds.get("PhotometricInterpretation", "")).strip().upper(),
            planar=int(ds.get("PlanarConfiguration", 0) or 0), transfer_syntax=ts,
        )
    except (AttributeError, TypeError, ValueError):
        raise UnsupportedPixels("pixel-module-invalid") from None


def iter_frames(ds: Dataset, indices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray, str]]:
    """Yield ``(index, frame, photometric)`` decoded one frame at a time.

    Colour comes out as (rows, cols, 3) RGB whatever the stored colour space; ``photometric`` is
    the interpretation of the yielded array (e.g. "RGB" for YBR input).
    """
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options

    info = pixel_info(ds)
    try:
        decoder = get_decoder(info.transfer_syntax)
    except NotImplementedError:
        raise UnsupportedPixels("pixel-transfer-syntax-unsupported") from None
    if not decoder.is_available:
        raise UnsupportedPixels("pixel-decoder-missing")
    want = list(range(info.frames)) if indices is None else list(indices)
    try:
        opts = as_pixel_options(ds, as_rgb=True)
        it = decoder.iter_array(ds, indices=want, validate=True, raw=False, **opts)
        for idx, (arr, meta) in zip(want, it):
            pi = str(meta.get("photometric_interpretation", info.photometric))
            if arr.ndim == 3 and info.samples == 1:  # defensive: 1 frame returned as 3-D
                arr = arr.reshape(arr.shape[-2:])
            yield idx, arr, pi
    except UnsupportedPixels:
        raise
    except Exception:  # any decoder failure: corrupt or unsupported stream
        raise UnsupportedPixels("pixel-decode-failed") from None


def palette_rgb(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    from pydicom.pixels.processing import apply_color_lut

    try:
        rgb = apply_color_lut(frame, ds)
    except Exception:
        raise UnsupportedPixels("palette-invalid") from None
    if rgb.dtype != np.uint8:  # 16-bit LUT entries
        rgb = (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize == 2 else rgb.astype(np.uint8)
    return rgb


def palette_black(ds: Dataset, frame: np.ndarray) -> int:
    """The stored index whose palette colour is darkest (masks must look black, not a hue)."""
    vals = np.unique(frame)
    rgb = palette_rgb(ds, vals).reshape(-1, 3).astype(np.int64)
    return int(vals[int(np.argmin(rgb.sum(axis=1)))])


class FrameSink:
    """Collects masked frames and, on commit, writes them into the dataset."""

    def __init__(self, ds: Dataset, info: PixelInfo):
        self.ds = ds
        self.info = info
        self.out_pi: str | None = None
        ts = info.transfer_syntax
        if info.bits_allocated not in (8, 16, 32):
            raise UnsupportedPixels("pixel-bits-unsupported")
        if info.native and ts in NATIVE_LE:
            self.mode, self.out_ts = "native", ts
        elif info.native:
            self.mode, self.out_ts = "native", ExplicitVRLittleEndian
        elif info.samples * (info.bits_allocated // 8) <= 15:
            self.mode, self.out_ts = "rle", RLELossless
        else:
            self.mode, self.out_ts = "native", ExplicitVRLittleEndian
        frame_bytes = info.rows * info.cols * info.samples * (info.bits_allocated // 8)
        self._native = bytearray(frame_bytes * info.frames) if self.mode == "native" else None
        self._frame_bytes = frame_bytes
        self._encoded: list[bytes] = []
        self._count = 0

    def _dtype(self) -> np.dtype:
        kind = "i" if self.info.signed else "u"
        return np.dtype(f"<{kind}{self.info.bits_allocated // 8}")

    def add(self, index: int, frame: np.ndarray, photometric: str) -> None:
        if index != self._count:
            raise ValueError("frames must be added in order")
        self.out_pi = photometric
        arr = np.ascontiguousarray(frame.astype(self._dtype(), copy=False))
        if self.mode == "native":
            keep_planar = self.info.planar == 1 and arr.ndim == 3 and photometric == self.info.photometric
            if keep_planar:
                arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
            start = index * self._frame_bytes
            self._native[start:start + self._frame_bytes] = arr.tobytes()
        else:
            self._encoded.append(self._rle(arr, photometric))
        self._count += 1

    def _rle(self, arr: np.ndarray, photometric: str) -> bytes:
        from pydicom.pixels.encoders import RLELosslessEncoder

        try:
            return RLELosslessEncoder.encode(
                arr, encoding_plugin="pydicom", rows=self.info.rows, columns=self.info.cols,
                samples_per_pixel=self.info.samples, bits_allocated=self.info.bits_allocated,
                bits_stored=self.info.bits_stored, pixel_representation=int(self.info.signed),
                photometric_interpretation=photometric, number_of_frames=1, planar_configuration=0,
            )
        except Exception:
            raise UnsupportedPixels("pixel-encode-failed") from None

    def commit(self) -> None:
        """Replace PixelData and the attributes that describe it. Call once, after all frames."""
        if self._count != self.info.frames:
            raise ValueError("not all frames were written")
        ds, info = self.ds, self.info
        pi = self.out_pi or info.photometric
        if self.mode == "native":
            data = bytes(self._native)
            if len(data) % 2:
                data += b"\x00"
            ds.PixelData = data
            ds["PixelData"].VR = "OB" if info.bits_allocated <= 8 else "OW"
            ds["PixelData"].is_undefined_length = False
        else:
            ds.PixelData = encapsulate(self._encoded)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        self._native = None
        self._encoded = []
        lossy_before = info.transfer_syntax in LOSSY_TS
        ds.file_meta.TransferSyntaxUID = self.out_ts
        if pi != info.photometric:
            ds.PhotometricInterpretation = pi
        if info.samples == 3:
            keep_planar = self.mode == "native" and info.planar == 1 and pi == info.photometric
            ds.PlanarConfiguration = 1 if keep_planar else 0
        if lossy_before and str(ds.get("LossyImageCompression", "")) != "01":
            ds.LossyImageCompression = "01"
        # The dataset must now be written with the encoding of its new transfer syntax.
        if self.out_ts != info.transfer_syntax:
            ds.set_original_encoding(self.out_ts == ImplicitVRLittleEndian, True)

    @property
    def output_transfer_syntax(self) -> UID:
        return self.out_ts

