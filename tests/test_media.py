"""Input sniffing and the bad inputs every image path must refuse clearly."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmassist import core
from mmassist.core.contract.media import Media, extensions_for, mime_matches, sniff_mime
from mmassist.plugins.image import load_image


def _png_bytes(size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                      ("BMP", "image/bmp"), ("WEBP", "image/webp"), ("TIFF", "image/tiff")])
def test_image_formats_are_sniffed_and_decoded(fmt, mime):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "blue").save(buf, format=fmt)
    media = Media.of(buf.getvalue())
    assert media.mime_type == mime
    assert load_image(media).size == (20, 10)


def test_text_and_paths(tmp_path):
    assert Media.of("hello there").mime_type == "text/plain"
    note = tmp_path / "note.txt"
    note.write_text("hi")
    assert Media.of(str(note)).path == note
    assert Media.of("line one\nline two").value == "line one\nline two"  # never mistaken for a path


def test_mime_patterns():
    assert mime_matches("image/png", ("image/*",)) and not mime_matches("video/mp4", ("image/*",))
    assert ".png" in extensions_for(("image/png",)) and ".mp4" in extensions_for(("video/*",))
    assert sniff_mime(b"\x1a\x45\xdf\xa3....webm") == "video/webm"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio/wav"


def test_empty_inputs_are_refused(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(core.UndecodableInputError, match="empty"):
        Media.of(empty)
    with pytest.raises(core.UndecodableInputError, match="empty"):
        Media.of(b"")


def test_text_file_named_png_is_refused_by_the_decoder(tmp_path):
    fake = tmp_path / "cat.png"
    fake.write_text("this is not a picture")
    media = Media.of(fake)
    with pytest.raises(core.UndecodableInputError, match=r"cat\.png.*as an image"):
        load_image(media)


def test_truncated_image_is_refused():
    data = _png_bytes((64, 64))
    with pytest.raises(core.UndecodableInputError, match="cannot decode"):
        load_image(Media.of(data[: len(data) // 2]))


def test_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 Mpx, a few KB on disk
    with pytest.raises(core.UndecodableInputError, match="decompression bomb|over the limit"):
        load_image(Media.of(bomb))
    with pytest.raises(core.UndecodableInputError, match="over the limit"):
        load_image(Media.of(Image.new("1", (9000, 9000))), max_pixels=1_000_000)


def test_unsupported_python_type():
    with pytest.raises(core.UnsupportedInputError, match="type list"):
        Media.of([1, 2, 3])
