"""Dataset readers for fine-tuning: files on disk to a list of :class:`Example` values.

Three families of formats, chosen by the task and detected from the file's extension and content:

- Conversations (``chat``, ``vqa``, and ``caption``): JSON arrays or JSONL, in the LLaVA style
  (``image``/``video`` fields, or a field named after any installed modality, ``conversations`` of
  ``human``/``gpt`` turns) or the OpenAI style (``messages`` whose content is a string or typed parts).
  They are normalised the way :mod:`mmassist.core.runtime.processor` normalises a prompt at inference,
  with the same role and part aliases.
- Captions (``caption``): a folder of media files with ``captions.jsonl`` or ``captions.csv``
  (``file``, ``caption``), or one of those files given directly.
- Classification (``classification``): TSV, CSV or JSONL with a text (or media path) column and a
  label column. SST-2's headerless ``sentence<TAB>label`` works as is.
- Token classification (``token_classification``): CoNLL files (``word TAG`` per line, the tag in the last
  column, a blank line between sentences, ``-DOCSTART-`` lines skipped) or JSONL/JSON records
  ``{"tokens": [...], "tags": [...]}`` (``ner_tags`` as Hugging Face datasets write them: tags or their
  indices in ``task.labels``).

No modality is named here: what a file is, and which modalities records may name, is whatever the host's
plugins read (:class:`MediaTypes`): a file's modality is the encoder the host routes it to.

Every problem is a :class:`~mmassist.core.errors.DataFormatError` naming the file and the 1-based line.
Media paths are resolved against the data file's folder and may not leave it (no ``..``, no
absolute paths elsewhere, no symlinks pointing out).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mmassist.core.runtime.config import DataConfig, TaskConfig
from mmassist.core.errors import ConfigError, DataFormatError, MMAssistError, UnsupportedInputError
from mmassist.core.contract.host import Host
from mmassist.core.contract.media import Media
from mmassist.core.contract.sources import uri_scheme
from mmassist.core.runtime.model import placeholder_token
from mmassist.core.runtime.tags import check_tag
from mmassist.core.runtime.processor import ROLE_ALIASES, caption_prompt, content_parts, join_parts

CAPTION_FILES = ("captions.jsonl", "captions.csv")
_KNOWN_ROLES = ", ".join(sorted(ROLE_ALIASES))


@dataclass(frozen=True)
class MediaTypes:
    """What the host's plugins read, as the readers need it: the modalities of file-reading encoders
    (record fields and content parts may name them), their placeholders, and the file endings a
    classification cell must end in to be read as a media file rather than as text (those the
    plugins declare and those their MIME types map to)."""

    host: Host
    modalities: tuple[str, ...]
    suffixes: frozenset[str]
    placeholder_re: re.Pattern | None

    @classmethod
    def of(cls, host: Host) -> "MediaTypes":
        modalities = tuple(host.media_modalities())
        suffixes = frozenset(e for m in modalities for e in host.file_extensions(m))
        pattern = re.compile("|".join(re.escape(placeholder_token(m)) for m in modalities)) if modalities else None
        return cls(host, modalities, suffixes, pattern)

    def placeholders(self, text: str) -> list[str]:
        """The modalities of the placeholders in ``text``, in order."""
        return [m.group()[1:-1] for m in self.placeholder_re.finditer(text)] if self.placeholder_re else []

    def modality_of(self, path: Path, value: str, loc: "_Loc") -> str:
        """The modality of the encoder the host routes a media file to."""
        specs = [s for s in self.host.encoders if s.modality in self.modalities]
        try:
            spec, _ = self.host.route(path, candidates=[s.name for s in specs])
        except UnsupportedInputError:  # a type no media plugin reads (text, a PDF...)
            accepted = "; ".join(f"{s.name}: {', '.join([*s.mime_types, *s.extensions])}" for s in specs)
            raise loc.error(f"media file {value!r} (detected type {Media.of(path).mime_type}) is not a type any "
                            f"installed plugin reads as media; accepted here: {accepted or 'nothing'}. Install a "
                            "plugin for this type (pip install mmassist-<thing>)") from None
        except MMAssistError as e:  # an empty file
            raise loc.error(f"media file {value!r}: {e}") from None
        return spec.modality

    def describe(self) -> str:
        """``<image>, <video> or <signal>`` for messages."""
        tags = [placeholder_token(m) for m in self.modalities]
        return " or ".join([", ".join(tags[:-1]), tags[-1]] if len(tags) > 1 else tags) or "none"


@dataclass(frozen=True)
class Example:
    """One training example.

    ``source`` is ``"<file>:<line>"`` (1-based; ``"<file>#<index>"`` for a JSON array that puts
    several records on one line). Conversation-like tasks (chat, vqa, caption) fill
    ``messages`` (``{"role", "content"}`` dicts whose text holds one ``<image>``, ``<video>``... (any
    installed modality's) placeholder per media item) and ``media`` (``(modality, absolute path)`` in
    placeholder order). Classification fills ``label`` and either ``text`` or one ``media`` item; token
    classification fills ``words`` and their ``tags``.
    """

    source: str
    messages: tuple[dict, ...] = ()
    media: tuple[tuple[str, Path], ...] = ()
    text: str | None = None
    label: str | None = None
    words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


# -- locations and errors ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Loc:
    """Where a record starts: the file, its 1-based line and, in a JSON array, its index."""

    path: str
    line: int | None
    index: int | None = None

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def error(self, message: str) -> DataFormatError:
        if self.index is not None:
            message = f"record #{self.index}: {message}"
        return DataFormatError(message, path=self.path, line=self.line)


def _loc_of_source(source: str) -> _Loc:
    path, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return _Loc(path, int(line))
    return _Loc(source, None)  # "<file>#<index>"


# -- media paths -------------------------------------------------------------------------------


def resolve_media_path(base_dir: Path, value: str, source: str) -> Path:
    """The absolute, symlink-free path of a media file named in a data file.

    ``value`` is relative to ``base_dir`` (the data file's folder), or absolute inside it. A path
    that leaves the folder (``..``, an absolute path elsewhere, a symlink pointing out), a URL or a
    missing file raises :class:`DataFormatError` at ``source`` (``"<file>:<line>"``).
    """
    return _resolve_media(Path(base_dir).resolve(), value, _loc_of_source(source))


def _resolve_media(base: Path, value: Any, loc: _Loc) -> Path:
    # ``base`` is already resolved: resolving it once per file, not once per item, keeps big files fast.
    if not isinstance(value, str) or not value.strip():
        raise loc.error(f"a media path must be a non-empty string, got {value!r:.80}")
    if "://" in value or value.startswith("data:"):
        raise loc.error(f"media must be local files inside the data folder {base}; "
                        f"URLs and data URIs are not supported: {value!r:.120}")
    try:
        path = (base / value).resolve()  # an absolute value replaces base
        if not path.is_relative_to(base):
            raise loc.error(f"media path {value!r} points outside the data folder {base}; "
                            "copy the file into that folder and give its path relative to it")
        if not path.is_file():
            raise loc.error(f"media file {value!r} does not exist (looked for {path})")
    except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system...
        if isinstance(e, DataFormatError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise loc.error(f"media path {value!r:.120} is not a usable file name ({reason}); "
                        "give the path of a file inside the data folder") from None
    return path


# -- reading files ------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError("the data file does not exist", path=str(path)) from None
    except OSError as e:
        raise DataFormatError(f"cannot read the data file: {e.strerror}", path=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataFormatError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
                              "save the file as UTF-8", path=str(path), line=line) from None
    if text.startswith("\ufeff"):  # a byte-order mark, as spreadsheet programs write
        text = text[1:]
    if not text.strip():
        raise DataFormatError("the file is empty", path=str(path), line=1)
    return text


def _iter_records(path: Path, text: str) -> Iterator[tuple[_Loc, Any]]:
    """The JSON values of a JSON array or of JSONL lines, each with where it starts."""
    name = str(path)
    start = len(text) - len(text.lstrip())
    if text.startswith("[", start):
        yield from _iter_json_array(name, text, start)
        return
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if path.suffix == ".json" and number == 1:
                hint = "; a .json data file holds an array of records ([...]), a .jsonl file one object per line"
            raise DataFormatError(f"invalid JSON: {e.msg} (column {e.colno}){hint}", path=name, line=number) from None
        except (ValueError, RecursionError) as e:  # a number of over 4300 digits, arrays nested too deep
            raise DataFormatError(_json_limit_message(e), path=name, line=number) from None
        yield _Loc(name, number), value


def _iter_json_array(name: str, text: str, pos: int) -> Iterator[tuple[_Loc, Any]]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        index = 0
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"invalid JSON: {e.msg} (column {e.colno})", path=name, line=e.lineno) from None
            except (ValueError, RecursionError) as e:
                raise DataFormatError(_json_limit_message(e), path=name, line=line_at(pos)) from None
            yield _Loc(name, line_at(pos), index), value
            index += 1
            pos = ws.match(text, end).end()
            if text.startswith(",", pos):
                pos = ws.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise DataFormatError("invalid JSON: expected ',' or ']' after a record", path=name, line=line_at(pos))
    pos = ws.match(text, pos).end()
    if pos < len(text):
        raise DataFormatError("invalid JSON: extra data after the closing ']'", path=name, line=line_at(pos))


def _json_limit_message(error: Exception) -> str:
    """Valid JSON that Python's reader refuses: an integer of thousands of digits, or deep nesting."""
    if isinstance(error, RecursionError):
        return "invalid JSON: arrays or objects nested too deeply to read; flatten the record"
    return f"invalid JSON: {str(error).split(';')[0]}; write such a number as a string"


def _iter_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[_Loc, list[str]]]:
    """CSV/TSV rows with the line each starts on; blank lines are skipped.

    TSV is read without quoting (as GLUE's files are written: a tab never appears in a field, and
    a quote is just a character); CSV with the usual double-quote quoting.
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    name, fmt = str(path), "TSV" if delimiter == "\t" else "CSV"
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(f"invalid {fmt}: {e}", path=name, line=reader.line_num) from None
        if row and not (len(row) == 1 and not row[0].strip()):
            yield _Loc(name, start), row
        start = reader.line_num + 1


def _delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    if path.suffix.lower() == ".csv":
        return ","
    return "\t" if "\t" in text.split("\n", 1)[0] else ","


def _kind_of_file(path: Path, text: str) -> str:
    """``records`` (JSON/JSONL) or ``table`` (CSV/TSV), from the extension, else from the content."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "records"
    if suffix in (".csv", ".tsv"):
        return "table"
    return "records" if text.lstrip()[:1] in ("[", "{") else "table"


def _require_examples(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataFormatError("the file holds no examples", path=str(path), line=1)
    if len({e.source for e in examples}) < len(examples):
        # A JSON array with several records on one line (json.dump's default): lines do not tell
        # the records apart, their indices do.
        examples = [replace(e, source=f"{path}#{i}") for i, e in enumerate(examples)]
    return examples


# -- public entry points -------------------------------------------------------------------------


def load_examples(path: str | Path, task: TaskConfig, data: DataConfig, host: Host | None = None) -> list[Example]:
    """Read one dataset file (or a captions folder) for ``task`` into examples.

    ``chat`` and ``vqa`` read conversations (JSON/JSONL); ``caption`` reads a captions folder or file,
    or conversations; ``classification`` reads TSV/CSV/JSONL/JSON with ``data.text_column`` and
    ``data.label_column`` (a headerless two-column file is read as text, label). A URI of a scheme a
    plugin registered is resolved through ``host`` first (default: a new :class:`Host`): the built-in
    ``bundled:<dataset>/<file>`` names a file of the project's bundled data, built on first use.
    """
    host = host or Host()
    types = MediaTypes.of(host)
    if uri_scheme(path) is not None:
        path = host.resolve_data(path)
    path = Path(path)
    if path.is_dir():
        if task.kind != "caption":
            raise DataFormatError(f"is a folder; a {task.kind} task reads a data file "
                                  f"({'TSV, CSV or JSONL' if task.kind == 'classification' else 'JSON or JSONL'})",
                                  path=str(path))
        return _load_caption_folder(path, task, types)
    if not path.exists():
        raise DataFormatError("the data file does not exist", path=str(path))
    text = _read_text(path)
    base = path.parent.resolve()
    file_kind = _kind_of_file(path, text)

    if task.kind == "token_classification":
        if file_kind == "records":
            return _require_examples([_tagged_record(loc, rec, task) for loc, rec in _iter_records(path, text)], path)
        return _require_examples(_conll(path, text, task), path)

    if task.kind == "classification":
        if file_kind == "table":
            return _require_examples(_classification_table(path, text, base, task, data, types), path)
        return _require_examples([_classification_record(loc, rec, base, task, data, types)
                                  for loc, rec in _iter_records(path, text)], path)

    if file_kind == "table":
        if task.kind == "caption":
            return _require_examples(_caption_table(path, text, base, task, types), path)
        raise DataFormatError(f"a {task.kind} task reads conversations from JSON or JSONL files, "
                              f"not {path.suffix or 'tabular'} files", path=str(path))
    examples = []
    for loc, rec in _iter_records(path, text):
        if not isinstance(rec, dict):
            raise loc.error(f"a record must be a JSON object, got {_json_type(rec)}")
        if task.kind == "caption" and "caption" in rec and "conversations" not in rec and "messages" not in rec:
            examples.append(_caption_example(loc, rec.get("file"), rec.get("caption"), base, task, types))
        else:
            examples.append(_conversation(loc, rec, base, types))
    return _require_examples(examples, path)


def split_examples(examples: Sequence[Example], validation_fraction: float, test_fraction: float,
                   seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """Hold out shuffled shares of ``examples``: ``(train, validation, test)``.

    Deterministic for a seed; the three parts are disjoint and each keeps the original order. A
    non-zero fraction holds out at least one example.
    """
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"data.{name}={value} must be in [0, 1)")
    if validation_fraction + test_fraction >= 1.0:
        raise ConfigError(f"data.validation_fraction + data.test_fraction = "
                          f"{validation_fraction + test_fraction} leaves nothing to train on; keep it under 1")
    n = len(examples)
    n_val = _share(n, validation_fraction)
    n_test = _share(n, test_fraction)
    if n_val + n_test >= n and (n_val or n_test):
        raise DataFormatError(f"only {n} example(s): too few to hold out {n_val} for validation and "
                              f"{n_test} for testing and still train; add data or give validation/test files")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    test = sorted(order[n_val:n_val + n_test])
    train = sorted(order[n_val + n_test:])
    return [examples[i] for i in train], [examples[i] for i in val], [examples[i] for i in test]


def _share(n: int, fraction: float) -> int:
    if fraction <= 0.0:
        return 0
    return max(1, round(n * fraction))


def load_splits(data: DataConfig, task: TaskConfig, host: Host | None = None) -> dict[str, list[Example]]:
    """``{"train", "validation", "test"}``: the files given, or parts carved from train with ``data.seed``.

    Validation is carved with ``data.validation_fraction`` when no file is given, test with
    ``data.test_fraction`` (so test may be empty).
    """
    if not data.train:
        raise ConfigError("data.train is not set; give a training data file or captions folder")
    host = host or Host()
    train = load_examples(data.train, task, data, host)
    validation = load_examples(data.validation, task, data, host) if data.validation else None
    test = load_examples(data.test, task, data, host) if data.test else None
    val_fraction = 0.0 if validation is not None else data.validation_fraction
    test_fraction = 0.0 if test is not None else data.test_fraction
    if val_fraction or test_fraction:
        try:
            train, carved_val, carved_test = split_examples(train, val_fraction, test_fraction, data.seed)
        except DataFormatError as e:
            raise DataFormatError(str(e), path=str(data.train)) from None
        validation = carved_val if validation is None else validation
        test = carved_test if test is None else test
    return {"train": train, "validation": validation or [], "test": test or []}


# -- conversations -------------------------------------------------------------------------------


def _conversation(loc: _Loc, rec: dict, base: Path, types: MediaTypes) -> Example:
    """One LLaVA- or OpenAI-style record as messages with placeholders and media in their order."""
    if "conversations" in rec and "messages" in rec:
        raise loc.error("a record has both 'conversations' (LLaVA) and 'messages' (OpenAI); keep one")
    turns = rec.get("conversations", rec.get("messages"))
    if turns is None:
        raise loc.error("a conversation record needs a 'conversations' (LLaVA) or 'messages' (OpenAI) list; "
                        f"its keys: {', '.join(map(str, rec)) or 'none'}")
    if not isinstance(turns, list) or not turns:
        raise loc.error(f"'conversations'/'messages' must be a non-empty list, got {turns!r:.80}")

    # Media named at the record's top level (LLaVA's image/video, or images/videos/... beside OpenAI
    # messages whose parts carry no path), per modality, in order.
    top: dict[str, list[Any]] = {}
    for modality in types.modalities:
        singular, plural = modality, modality + "s"
        if singular in rec and plural in rec:
            raise loc.error(f"a record has both {singular!r} and {plural!r}; keep one")
        value = rec.get(singular, rec.get(plural))
        if value is None:
            continue
        top[modality] = list(value) if isinstance(value, list) else [value]

    # Per modality, one slot per placeholder in text order: a path from a typed part, or None
    # for a placeholder to fill from the top-level list.
    slots: dict[str, list[Any]] = {m: [] for m in types.modalities}
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise loc.error(f"turn {i} must be an object with role/content (or from/value), got {turn!r:.80}")
        raw_role = turn.get("role", turn.get("from"))
        if raw_role is None:
            raise loc.error(f"turn {i} has no 'role' (or LLaVA 'from')")
        role = ROLE_ALIASES.get(str(raw_role).lower())
        if role is None:
            raise loc.error(f"turn {i} has an unknown role {raw_role!r}; known roles: {_KNOWN_ROLES}")
        if "content" not in turn and "value" not in turn:
            raise loc.error(f"turn {i} has no 'content' (or LLaVA 'value')")
        content = turn.get("content", turn.get("value"))
        messages.append({"role": role, "content": _content_text(content, slots, loc, i, types)})

    if not any(m["role"] == "assistant" for m in messages):
        raise loc.error("the conversation has no assistant turn; there is nothing to learn from it")

    for modality, items in reversed(top.items()):  # reversed, so images come first, then videos...
        if items and not slots[modality]:
            # LLaVA's convention: media without placeholders go before the first user turn's text.
            first_user = next((j for j, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise loc.error(f"{modality} files are given but the conversation has no user turn")
            tag = placeholder_token(modality)
            msg = messages[first_user]
            messages[first_user] = {**msg, "content": (tag + "\n") * len(items) + msg["content"]}
            slots[modality] = [None] * len(items)

    paths: dict[str, list[Path]] = {}
    for modality in types.modalities:
        free = sum(1 for s in slots[modality] if s is None)
        given = top.get(modality, [])
        if free != len(given):
            tag = placeholder_token(modality)
            raise loc.error(f"{len(slots[modality])} {tag} placeholder(s) but "
                            f"{len(slots[modality]) - free + len(given)} {modality} file(s); "
                            f"put exactly one {tag} in the text for each {modality}")
        fill = iter(given)
        paths[modality] = [_resolve_media(base, next(fill) if s is None else s, loc) for s in slots[modality]]

    return Example(loc.source, tuple(messages), _media_in_text_order(messages, paths, types))


def _content_text(content: Any, slots: dict[str, list[Any]], loc: _Loc, turn: int, types: MediaTypes) -> str:
    """A turn's text, as :meth:`mmassist.core.runtime.processor.Processor.conversation` builds it at inference."""
    if isinstance(content, str):
        _count_placeholders(content, slots, types)
        return content
    if not isinstance(content, list):
        raise loc.error(f"turn {turn}: content must be a string or a list of parts, got {_json_type(content)}")
    try:
        parts = content_parts(content, types.modalities)
    except UnsupportedInputError as e:
        raise loc.error(f"turn {turn}: {e}") from None
    pieces = []
    for kind, value in parts:
        if kind == "text":
            if not isinstance(value, str):
                raise loc.error(f"turn {turn}: a text part's 'text' must be a string")
            _count_placeholders(value, slots, types)
            pieces.append(("text", value))
        else:
            slots[kind].append(value)
            pieces.append((kind, placeholder_token(kind)))
    return join_parts(pieces)


def _count_placeholders(text: str, slots: dict[str, list[Any]], types: MediaTypes) -> None:
    for modality in types.placeholders(text):
        slots[modality].append(None)


def _media_in_text_order(messages: Sequence[Mapping[str, str]], paths: dict[str, list[Path]],
                         types: MediaTypes) -> tuple[tuple[str, Path], ...]:
    queues = {m: iter(p) for m, p in paths.items()}
    out = []
    for msg in messages:
        for modality in types.placeholders(msg["content"]):
            out.append((modality, next(queues[modality])))
    return tuple(out)


# -- captions --------------------------------------------------------------------------------------


def _load_caption_folder(folder: Path, task: TaskConfig, types: MediaTypes) -> list[Example]:
    found = [folder / name for name in CAPTION_FILES if (folder / name).is_file()]
    if not found:
        raise DataFormatError(f"a captions folder needs a {' or '.join(CAPTION_FILES)} file "
                              "(one file name and caption per media file)", path=str(folder))
    if len(found) > 1:
        raise DataFormatError(f"the captions folder has both {' and '.join(CAPTION_FILES)}; keep one",
                              path=str(folder))
    path = found[0]
    text = _read_text(path)
    base = folder.resolve()
    if path.suffix == ".csv":
        return _require_examples(_caption_table(path, text, base, task, types), path)
    examples = []
    for loc, rec in _iter_records(path, text):
        if not isinstance(rec, dict):
            raise loc.error(f"a record must be a JSON object, got {_json_type(rec)}")
        examples.append(_caption_example(loc, rec.get("file"), rec.get("caption"), base, task, types))
    return _require_examples(examples, path)


def _caption_table(path: Path, text: str, base: Path, task: TaskConfig, types: MediaTypes) -> list[Example]:
    rows = _iter_rows(path, text, _delimiter(path, text))
    header_loc, header = next(rows, (None, None))
    if header is None:
        raise DataFormatError("the file is empty", path=str(path), line=1)
    columns = [c.strip() for c in header]
    if "file" not in columns or "caption" not in columns:
        raise header_loc.error(f"a captions table needs a header with the columns file and caption; "
                               f"found: {', '.join(columns)}")
    i_file, i_caption = columns.index("file"), columns.index("caption")
    examples = []
    for loc, row in rows:
        _check_width(loc, row, len(columns), "the header")
        examples.append(_caption_example(loc, row[i_file], row[i_caption], base, task, types))
    return examples


def _caption_example(loc: _Loc, file: Any, caption: Any, base: Path, task: TaskConfig,
                     types: MediaTypes) -> Example:
    if file is None or caption is None:
        missing = " and ".join(k for k, v in (("file", file), ("caption", caption)) if v is None)
        raise loc.error(f"a caption record needs 'file' and 'caption'; {missing} missing")
    if not isinstance(caption, str) or not caption.strip():
        raise loc.error(f"the caption must be a non-empty string, got {caption!r:.80}")
    if types.placeholders(caption):
        raise loc.error(f"the caption holds a media placeholder ({types.describe()}); remove it")
    path = _resolve_media(base, file, loc)
    modality = types.modality_of(path, file, loc)
    tag = placeholder_token(modality)
    prompt = task.prompt or caption_prompt(modality)
    user = prompt if tag in prompt else f"{tag}\n{prompt}"
    messages = ({"role": "user", "content": user}, {"role": "assistant", "content": caption})
    return Example(loc.source, messages, ((modality, path),))


# -- classification ----------------------------------------------------------------------------------


def _classification_table(path: Path, text: str, base: Path, task: TaskConfig, data: DataConfig,
                          types: MediaTypes) -> list[Example]:
    rows = _iter_rows(path, text, _delimiter(path, text))
    first_loc, first = next(rows, (None, None))
    if first is None:
        raise DataFormatError("the file is empty", path=str(path), line=1)
    cells = [c.strip() for c in first]
    has_header = data.text_column in cells or data.label_column in cells
    if has_header:
        for key, name in (("data.text_column", data.text_column), ("data.label_column", data.label_column)):
            if name not in cells:
                raise first_loc.error(f"the header has no column {name!r} ({key}); its columns: "
                                      f"{', '.join(cells)}; set {key} to one of them")
        i_text, i_label, width = cells.index(data.text_column), cells.index(data.label_column), len(cells)
        body: Iterator[tuple[_Loc, list[str]]] = rows
    else:
        # No header: SST-2's "sentence<TAB>label". Only if the first row's second cell is a label;
        # otherwise it is most likely a header with other column names.
        if len(first) < 2 or (task.labels and _label_name(first[1], task.labels) is None):
            raise first_loc.error(
                f"the first row is neither a header with the columns {data.text_column!r} and "
                f"{data.label_column!r} nor a data row whose second column is a known label "
                f"({_known_labels(task.labels)}); it reads: {', '.join(cells)[:200]}. "
                "Set data.text_column and data.label_column to the header's column names")
        i_text, i_label, width = 0, 1, len(first)
        body = _chain_first(first_loc, first, rows)
    examples = []
    for loc, row in body:
        _check_width(loc, row, width, "the header" if has_header else "the first row")
        examples.append(_classification_example(loc, row[i_text], row[i_label], base, task, types))
    return examples


def _classification_record(loc: _Loc, rec: Any, base: Path, task: TaskConfig, data: DataConfig,
                           types: MediaTypes) -> Example:
    if not isinstance(rec, dict):
        raise loc.error(f"a record must be a JSON object, got {_json_type(rec)}")
    missing = [k for k in (data.text_column, data.label_column) if k not in rec]
    if missing:
        raise loc.error(f"the record has no {' and no '.join(map(repr, missing))} "
                        f"(data.text_column={data.text_column!r}, data.label_column={data.label_column!r}); "
                        f"its keys: {', '.join(map(str, rec))}")
    value, label = rec[data.text_column], rec[data.label_column]
    if not isinstance(value, str):
        raise loc.error(f"{data.text_column!r} must be a string (text or a media path), got {_json_type(value)}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise loc.error(f"{data.label_column!r} must be a string or an integer, got {_json_type(label)}")
    return _classification_example(loc, value, str(label), base, task, types)


def _classification_example(loc: _Loc, value: str, raw_label: str, base: Path, task: TaskConfig,
                            types: MediaTypes) -> Example:
    raw_label = raw_label.strip()
    if not raw_label:
        raise loc.error("the label is empty")
    if task.labels:
        label = _label_name(raw_label, task.labels)
        if label is None:
            raise loc.error(f"unknown label {raw_label!r}; known labels: {_known_labels(task.labels)}")
    else:
        label = raw_label
    if _looks_like_media_path(value, types):
        path = _resolve_media(base, value, loc)
        return Example(loc.source, media=((types.modality_of(path, value, loc), path),), label=label)
    if not value.strip():
        raise loc.error("the text is empty")
    return Example(loc.source, text=value, label=label)


# -- token classification ------------------------------------------------------------------------


def _conll(path: Path, text: str, task: TaskConfig) -> list[Example]:
    """CoNLL sentences: ``word ... TAG`` lines (whitespace-separated, the tag last), blank lines between
    sentences, ``-DOCSTART-`` lines skipped. Each example's source is the line of its first word."""
    name = str(path)
    examples: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if words:
            examples.append(Example(f"{name}:{first}", words=tuple(words), tags=tuple(tags)))
            words.clear()
            tags.clear()

    for number, line in enumerate(text.split("\n"), 1):
        cells = line.split()
        if not cells or cells[0] == "-DOCSTART-":
            flush()
            continue
        loc = _Loc(name, number)
        if len(cells) < 2:
            raise loc.error(f"expected a word and its tag separated by whitespace (CoNLL: 'Paris I-LOC'), "
                            f"got {line.strip()[:80]!r}")
        if not words:
            first = number
        words.append(cells[0])
        tags.append(_tag_name(loc, cells[-1], task.labels))
    flush()
    return examples


def _tagged_record(loc: _Loc, rec: Any, task: TaskConfig) -> Example:
    """``{"tokens": [...], "tags": [...]}`` (or ``ner_tags``, tags or their indices in ``task.labels``)."""
    if not isinstance(rec, dict):
        raise loc.error(f"a record must be a JSON object, got {_json_type(rec)}")
    key = "tags" if "tags" in rec else "ner_tags"
    if "tokens" not in rec or key not in rec:
        raise loc.error(f"a token classification record has 'tokens' and 'tags' (lists of one word and one tag "
                        f"each); its keys: {', '.join(map(str, rec))}")
    tokens, raw_tags = rec["tokens"], rec[key]
    for field_name, value in (("tokens", tokens), (key, raw_tags)):
        if not isinstance(value, list):
            raise loc.error(f"{field_name!r} must be a list, got {_json_type(value)}")
    if not tokens:
        raise loc.error("'tokens' is empty")
    if len(tokens) != len(raw_tags):
        raise loc.error(f"{len(tokens)} tokens but {len(raw_tags)} tags; give one tag per token")
    for i, word in enumerate(tokens):
        if not isinstance(word, str) or not word.strip():
            raise loc.error(f"token {i} is {json.dumps(word)[:40]}; tokens are non-empty strings")
    tags = []
    for i, raw in enumerate(raw_tags):
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw < len(task.labels):
                raise loc.error(f"tag {i} is the index {raw}, but task.labels has {len(task.labels)} tags"
                                + ("" if task.labels else "; write the tags themselves or set task.labels"))
            raw = task.labels[raw]
        elif not isinstance(raw, str):
            raise loc.error(f"tag {i} must be a string or an index, got {_json_type(raw)}")
        tags.append(_tag_name(loc, raw, task.labels))
    return Example(loc.source, words=tuple(tokens), tags=tuple(tags))


def _tag_name(loc: _Loc, tag: str, labels: Sequence[str]) -> str:
    problem = check_tag(tag)
    if problem:
        raise loc.error(problem)
    if labels and tag not in labels:
        raise loc.error(f"unknown tag {tag!r}; task.labels: {', '.join(labels)}")
    return tag


def _label_name(raw: str, labels: Sequence[str]) -> str | None:
    """A label's name: itself when it is one, else the name at an integer index (SST-2's 0/1)."""
    raw = raw.strip()
    if raw in labels:
        return raw
    if raw.isdigit() and int(raw) < len(labels):
        return labels[int(raw)]
    return None


def _known_labels(labels: Sequence[str]) -> str:
    if not labels:
        return "task.labels is empty"
    return ", ".join(labels) + f" (or their indices 0-{len(labels) - 1})"


def _looks_like_media_path(value: str, types: MediaTypes) -> bool:
    """Whether a cell names a media file (one line ending in a file ending an installed plugin reads)
    rather than being text."""
    if "\n" in value or len(value) > 1024:
        return False
    return os.path.splitext(value.strip())[1].lower() in types.suffixes


# -- small helpers -----------------------------------------------------------------------------------


def _check_width(loc: _Loc, row: list[str], width: int, what: str) -> None:
    if len(row) != width:
        raise loc.error(f"the row has {len(row)} column(s) but {what} has {width}"
                        + ("; a field with the delimiter in it must be quoted" if len(row) > width else ""))


def _chain_first(loc: _Loc, row: list[str], rest: Iterator[tuple[_Loc, list[str]]]) -> Iterator[tuple[_Loc, list[str]]]:
    yield loc, row
    yield from rest


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
