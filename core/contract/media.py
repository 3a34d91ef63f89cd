"""Raw inputs as the host sees them: a path, bytes, a PIL image or a piece of text, with a MIME type.

The MIME type comes from the content (magic bytes) first and the file name second, so a text file
named ``photo.png`` is not mistaken for a picture by the router: it is routed by its name, then
refused by the image decoder with a clear error.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmassist.core.errors import UndecodableInputError, UnsupportedInputError

PIL_IMAGE_MIME = "image/x-pil"
TEXT_MIME = "text/plain"
SNIFF_BYTES = 64
# A string longer than this, or with a newline, is text, never a path.
_MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class Media:
    """One raw input. Exactly one of ``path``, ``data`` and ``value`` is set."""

    mime_type: str
    path: Path | None = None
    data: bytes | None = None
    value: Any = None
    name: str = ""
    # The first bytes of a file or bytes input (what plugins' magic bytes are matched against).
    head: bytes = b""

    @property
    def suffix(self) -> str:
        """A path's extension in lower case (``.csv``), else ``""``."""
        return self.path.suffix.lower() if self.path is not None else ""

    @property
    def modality(self) -> str:
        """The top-level MIME type: ``image``, ``video``, ``audio``, ``text``..."""
        return self.mime_type.split("/", 1)[0]

    def read_bytes(self) -> bytes:
        """The raw bytes of a path or bytes input."""
        if self.data is not None:
            return self.data
        if self.path is not None:
            return self.path.read_bytes()
        raise UnsupportedInputError(f"{self.name or 'this input'} is an in-memory object, not bytes")

    @classmethod
    def of(cls, item: Any) -> "Media":
        """Wrap any supported input; raise a clear error for unsupported or empty ones."""
        if isinstance(item, Media):
            return item
        if isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            if not data:
                raise UndecodableInputError("the input is empty (0 bytes); give a non-empty file")
            mime = sniff_mime(data[:SNIFF_BYTES]) or _text_or_binary(data)
            return cls(mime, data=data, name=f"<{len(data)} bytes>", head=data[:SNIFF_BYTES])
        if isinstance(item, Path) or (isinstance(item, str) and _is_file(item)):
            return cls._of_path(Path(item))
        if isinstance(item, str):
            return text_media(item)
        if _is_pil_image(item):
            return cls(PIL_IMAGE_MIME, value=item, name="<PIL image>")
        raise UnsupportedInputError(
            f"cannot use an input of type {type(item).__name__}; give a file path, bytes, "
            "a PIL image or a string of text"
        )

    @classmethod
    def _of_path(cls, path: Path) -> "Media":
        if not path.is_file():
            raise UnsupportedInputError(f"{path} is not a file")
        size = path.stat().st_size
        if size == 0:
            raise UndecodableInputError(f"{path} is empty (0 bytes); give a non-empty file")
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
        mime = sniff_mime(head) or mimetypes.guess_type(path.name)[0] or _text_or_binary(head)
        return cls(mime, path=path, name=str(path), head=head)


def media_file(item: Any) -> "Media":
    """An input meant as a file (``images=``, a media content part, a file to caption): like
    :meth:`Media.of`, but a path or string that names no file is an error, never read as text.

    :raises UnsupportedInputError: ``no such file: '<item>'``.
    """
    if isinstance(item, (str, Path)):
        text = str(item)
        if not _is_file(text):  # also a string too long or with a line break to be a path
            shown = text if len(text) <= 200 and "\n" not in text else text[:60].replace("\n", " ") + "..."
            raise UnsupportedInputError(f"no such file: {shown!r}; check the path")
    return Media.of(item)


def looks_like_a_file_name(text: Any) -> bool:
    """One short line with a folder separator or a file extension: a path, more likely than text."""
    if not isinstance(text, str) or "\n" in text or not 0 < len(text) <= 1024 or " " in text.strip():
        return False
    return "/" in text or "\\" in text or bool(os.path.splitext(text.strip())[1])


def _is_file(text: str) -> bool:
    if len(text) > _MAX_PATH_CHARS or "\n" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte...
        return False


def text_media(text: str) -> Media:
    """Text that must be read as text, never as a file name."""
    return Media(TEXT_MIME, value=text, name="<text>")


def sniff_mime(head: bytes) -> str | None:
    """The MIME type told by a file's first bytes, or None when they are not recognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            return None
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    return None


def _text_or_binary(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # A cut in the middle of a multi-byte character at the end of a sniffed head is still text.
        if e.start < len(data) - 3:
            return "application/octet-stream"
    return TEXT_MIME


def _is_pil_image(item: Any) -> bool:
    # Avoid importing PIL for non-image inputs.
    return type(item).__module__.startswith("PIL.") and hasattr(item, "convert")


def mime_matches(mime: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether ``mime`` matches one of ``patterns`` (exact types or ``image/*`` wildcards)."""
    major = mime.split("/", 1)[0]
    return any(p == mime or p == "*/*" or (p.endswith("/*") and p[:-2] == major) for p in patterns)


def extensions_for(mime_types: tuple[str, ...] | list[str]) -> list[str]:
    """File extensions (``.png``...) for a list of MIME types, for upload widgets and help texts."""
    exts: set[str] = set()
    for mime in mime_types:
        if mime.endswith("/*"):
            major = mime[:-2]
            exts.update(e for e, t in mimetypes.types_map.items() if t.startswith(major + "/"))
        else:
            exts.update(mimetypes.guess_all_extensions(mime))
    return sorted(exts)
