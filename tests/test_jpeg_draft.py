"""The PIL path decodes large JPEGs at a reduced scale (libjpeg's DCT scaling) down to twice the
resize target: much less work for camera photos, and the crop the model sees stays within a
level or so of a full-size decode."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.bench import _imagenet_like
from engine.loaders.decode import DRAFT_MIN_SIZE, decode_image, load_and_preprocess, preprocess_pil


def _jpeg(h: int, w: int, seed: int = 0, **save) -> bytes:
    out = io.BytesIO()
    _imagenet_like(np.random.default_rng(seed), h, w).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


@pytest.mark.parametrize("size, expected", [((3000, 4000), (750, 1000)),   # 1/4: 1/8 would go below 512
                                            ((1100, 1500), (550, 750)),    # 1/2
                                            ((1000, 1500), (1000, 1500)),  # 1/2 would give 500 < 512
                                            ((400, 500), (400, 500))])
def test_decode_scale_never_goes_below_min_size(size, expected):
    data = _jpeg(*size)
    assert decode_image(data, None).size[::-1] == size  # without min_size: full size
    assert decode_image(data, None, min_size=DRAFT_MIN_SIZE).size[::-1] == expected


@pytest.mark.parametrize("size", [(3000, 4000), (1536, 2048), (2048, 1200)])
def test_reduced_scale_decode_stays_close_to_the_full_decode(size):
    data = _jpeg(*size, seed=size[0])
    full = preprocess_pil(decode_image(data, None)).astype(np.float32)
    fast = load_and_preprocess(data, None).astype(np.float32)
    assert fast.shape == full.shape == (3, 224, 224)
    assert np.abs(fast - full).mean() <= 0.5 and np.abs(fast - full).max() <= 8


def test_exif_orientation_and_max_pixels_use_the_file_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: the decoded image is portrait
    out = io.BytesIO()
    _imagenet_like(np.random.default_rng(1), 1200, 1600).save(out, "JPEG", quality=90, exif=exif.tobytes())
    assert decode_image(out.getvalue(), None, min_size=DRAFT_MIN_SIZE).size == (600, 800)
    from engine.errors import DecodeError

    with pytest.raises(DecodeError, match="exceeds max_pixels"):
        decode_image(out.getvalue(), 1600 * 1200 - 1, min_size=DRAFT_MIN_SIZE)
