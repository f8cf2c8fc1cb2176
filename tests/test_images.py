"""read_image / overlay: odd but valid user images come out RGB uint8 in their displayed orientation;
dataset images in their stored one."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from refseg.data.io import read_image
from refseg.errors import DataError, ImageReadError
from refseg.visualize import overlay


def _gradient(h=24, w=40):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], -1).astype(np.uint8)


def test_rgb_jpeg_and_png(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3) and np.array_equal(out, rgb)


def test_grayscale(tmp_path):
    g = _gradient()[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (24, 40, 3) and np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :5, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (10, 10, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 9]) == (255, 255, 255)


def test_16bit_png(tmp_path):
    a = (np.linspace(0, 65535, 30 * 20).reshape(20, 30)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # full range kept, not clipped to 255/65535


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(_gradient()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (24, 40, 3)
    assert np.abs(out.astype(int) - _gradient().astype(int)).mean() < 12


def test_exif_rotation_gives_displayed_orientation(tmp_path):
    rgb = _gradient(24, 40)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 24, 3)  # displayed: portrait
    expected = np.rot90(rgb, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 8


def test_stored_orientation_ignores_exif_like_the_dataset_masks(tmp_path):
    """Dataset images: the stored pixel frame (COCO masks are annotated in it), decoded by OpenCV."""
    rgb = _gradient(24, 40)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg", orientation="stored")
    assert out.shape == (24, 40, 3) and np.abs(out.astype(int) - rgb.astype(int)).mean() < 8
    assert read_image(tmp_path / "r.jpg", orientation="exif").shape == (40, 24, 3)
    with pytest.raises(ValueError, match="orientation must be"):
        read_image(tmp_path / "r.jpg", orientation="upright")


@pytest.mark.parametrize("case,message", [("missing", "image file missing"), ("text", "image file unreadable")])
def test_stored_read_errors_are_data_errors_naming_the_item(tmp_path, case, message):
    p = tmp_path / "x.jpg"
    if case == "text":
        p.write_text("not an image")
    with pytest.raises(DataError) as e:
        read_image(p, orientation="stored", where="ref_id 7")
    assert str(e.value).startswith(f"{p}: {message}") and str(e.value).endswith("(ref_id 7)")


def test_tiny_image(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "t.png")
    assert read_image(tmp_path / "t.png").shape == (8, 8, 3)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "truncated"])
def test_bad_files_raise_one_line_errors(tmp_path, case):
    p = tmp_path / "x.jpg"
    if case == "directory":
        p = tmp_path
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("not an image")
    elif case == "truncated":
        Image.fromarray(_gradient(200, 200)).save(p, quality=95)
        p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_an_open_file_reads_as_its_path(tmp_path):
    """Uploads are decoded where they are (an open file, no copy to disk): the same pixels, EXIF included."""
    img = Image.fromarray(_gradient(30, 50))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    img.save(tmp_path / "r.jpg", quality=90, exif=exif)
    with open(tmp_path / "r.jpg", "rb") as f:
        f.read(7)  # a file not at its start
        out = read_image(f, name="r.jpg")
    assert out.shape == (50, 30, 3) and np.array_equal(out, read_image(tmp_path / "r.jpg"))


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_bad_open_files_raise_one_line_errors_naming_the_upload(tmp_path, data):
    if data is None:  # truncated
        Image.fromarray(_gradient(200, 200)).save(tmp_path / "t.jpg", quality=95)
        data = (tmp_path / "t.jpg").read_bytes()[:300]
    with pytest.raises(ImageReadError) as e:
        read_image(io.BytesIO(data), name="upload.jpg")
    assert "\n" not in str(e.value) and "upload.jpg" in str(e.value)


def test_overlay_keeps_size_and_marks_the_mask():
    img = np.full((50, 70, 3), 100, np.uint8)
    mask = np.zeros((50, 70), bool)
    mask[20:30, 30:50] = True
    out = overlay(img, mask, text="the thing — ünïcödé 😀\twith a tab")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out[25, 40], img[25, 40])  # tinted inside
    assert np.array_equal(out[45, 5], img[45, 5])  # untouched outside (below the caption)


def test_overlay_colours_each_mask_and_captions_each_expression():
    from refseg.visualize import PALETTE

    img = np.full((120, 160, 3), 100, np.uint8)
    masks = np.zeros((3, 120, 160), bool)
    masks[0, 60:80, 10:40] = True
    masks[1, 60:80, 60:90] = True
    masks[2, 60:80, 110:140] = True
    out = overlay(img, masks, ["first", "second", "third"])
    assert out.shape == img.shape and out.dtype == np.uint8
    centres = [out[70, 25], out[70, 75], out[70, 125]]
    for got, colour in zip(centres, PALETTE):  # each tinted towards its own colour
        want = (img[0, 0].astype(np.float32) * 0.55 + np.array(colour, np.float32) * 0.45 + 0.5).astype(np.uint8)
        assert np.array_equal(got, want)
    assert np.array_equal(out[110, 80], img[110, 80])  # outside every mask and below the caption
    # One caption line per expression: the caption box is about three lines tall.
    def box_height(o):  # the caption box is black; text starts a padding away from its left edge
        return int((o[:, 0] == 0).all(axis=-1).sum())

    assert box_height(out) > 2 * box_height(overlay(img, masks[0], "first"))
    with pytest.raises(ValueError, match="colours"):
        overlay(img, np.zeros((len(PALETTE) + 1, 120, 160), bool))


def test_max_pixels_refuses_from_the_header(tmp_path):
    p = tmp_path / "big.png"
    Image.new("1", (4000, 3000)).save(p)  # 12 megapixels, tiny on disk
    with pytest.raises(ImageReadError, match="too large: 4000x3000 is 12.0 megapixels, the limit is 10"):
        read_image(p, max_pixels=10_000_000)
    assert read_image(p, max_pixels=12_000_000).shape == (3000, 4000, 3)


def test_label_resize_keeps_pixel_centres():
    """Masks are resized on the image's pixel-centre grid: a 31x31 square centred at (46, 46) of a 192 px
    image lands centred at (46.5 / 1.5 - 0.5) = 30.5 at 128 px (plain INTER_NEAREST puts it at 31.0)."""
    from refseg.data.transforms import resize_label_map, resize_mask

    m = np.zeros((192, 192), np.uint8)
    m[31:62, 31:62] = 1
    small = resize_mask(m, 128)
    ys, xs = np.nonzero(small)
    assert small.dtype == bool and ys.mean() == xs.mean() == 30.5 and small.sum() == 400
    labels = m.astype(np.int64) * 7
    out = resize_label_map(labels, (64, 96))
    assert out.dtype == np.int64 and out.shape == (64, 96) and set(np.unique(out)) == {0, 7}


def test_captions_stay_one_line_in_reading_order_without_boxes():
    """Control characters, bidi overrides and line separators do not reach a caption; characters no
    available font has are written out ([dog face], [U+72D7]) or drawn in a fallback font, never as
    the font's "missing" box."""
    from refseg.app import parse_expressions
    from refseg.visualize import caption_font_and_text, printable_line

    assert printable_line("the man\u2028on the\u2029left\x85now") == "the man on the left now"
    assert printable_line("\u202etfel eht\u202c no \u2066nam\u2069\x07\x1b eht\u200b\ufe0f") == "tfel eht no nam eht"
    assert parse_expressions("the man\u2028on the left") == ["the man on the left"]  # one expression, not two
    assert parse_expressions("the dog\r\nthe cat\n\u202ethe bird") == ["the dog", "the cat", "the bird"]

    img = np.full((60, 200, 3), 100, np.uint8)
    mask = np.zeros((60, 200), bool)
    plain = overlay(img, mask, "the red one")
    for hostile in ["the red\x07 one", "the red one\u202e", "\u2066the red one\u2069", "the\u200b red one",
                    "the red\u2028one"]:
        assert np.array_equal(overlay(img, mask, hostile), plain), repr(hostile)

    for text in ["the dog 🐶", "左边的狗", "the ☃ snowman ∑"]:
        font, shown = caption_font_and_text(text, 20)
        missing = font.getmask("\U0010FFFD")
        boxes = [c for c in shown if c != " " and font.getmask(c).size == missing.size
                 and bytes(font.getmask(c)) == bytes(missing)]
        assert not boxes, (text, shown, boxes)
        assert all(c in shown for c in text if c != " ") or "[" in shown, shown  # kept, or written out
    assert "dog face" in caption_font_and_text("🐶", 20)[1] or caption_font_and_text("🐶", 20)[1] == "🐶"


def test_the_pixel_limit_is_ours_and_pil_is_left_alone(tmp_path):
    """A header beyond PIL's own limit gets our message with our limit; PIL's global is not changed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png_header_only(w, h):  # a PNG whose header says w x h, with (almost) no pixel data
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))

    before = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(60000, 60000))
    with pytest.raises(ImageReadError, match=r"too large: .*bomb.png is 3600.0 megapixels, the limit is 50$"):
        read_image(p, max_pixels=50_000_000)
    with pytest.raises(ImageReadError, match=r"too large: .*3600.0 megapixels, the limit is \d"):
        read_image(p)
    p.write_bytes(png_header_only(12000, 10000))  # 120 MP: beyond PIL's warning level, within its limit
    with pytest.raises(ImageReadError, match="too large: 12000x10000 is 120.0 megapixels, the limit is 50$"):
        read_image(p, max_pixels=50_000_000)
    assert Image.MAX_IMAGE_PIXELS == before
