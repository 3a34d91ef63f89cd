"""The ``mmassist`` command: one entry point, a sub-command per job.

A user's mistake (an :class:`mmassist.core.MMAssistError`) is printed as one line on stderr and the
command exits with status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mmassist.core.version import __version__

EXIT_USER_ERROR = 2


def set_offline_defaults() -> None:
    """The project's entry points never reach a model hub or send analytics, unless the user says so."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the encoders and named models every loaded plugin registered, warnings, and the plugins that
    failed (``-v``: with their tracebacks; ``--strict``: exit 1 if any failed, for CI)."""
    from mmassist import core

    host = core.Host()
    rows = host.describe()
    models = [{"name": m.name, "kind": m.kind, "distribution": m.distribution, "requires": m.requires,
               "description": m.description} for m in host.models]
    failed = [dataclasses.asdict(f) for f in host.failed_plugins]
    if args.json:
        print(json.dumps({"encoders": rows, "models": models, "warnings": host.warnings,
                          "failed_plugins": failed}, indent=2))
    else:
        cols = ("name", "modality", "mime_types", "extensions", "config", "distribution", "version")
        print(format_table([{c: r[c] for c in cols} for r in rows], cols))
        print()
        cols = ("name", "kind", "distribution", "requires")
        print(format_table([{c: m[c] for c in cols} for m in models], cols))
        for warning in host.warnings:
            print(f"\nwarning: {warning}")
        if host.failed_plugins:
            print(f"\n{len(host.failed_plugins)} plugin(s) failed to load:")
            for f in host.failed_plugins:
                print(f"  {f}")
                if args.verbose and f.traceback:
                    print("    " + f.traceback.rstrip().replace("\n", "\n    "))
            if not args.verbose and any(f.traceback for f in host.failed_plugins):
                print("(mmassist plugins -v shows where in each plugin it failed)")
    return 1 if args.strict and host.failed_plugins else 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune from a config file, with a progress bar and a line of metrics per evaluation."""
    from mmassist.core.training.callbacks import ProgressPrinter
    from mmassist.core.runtime.config import FusionConfig
    from mmassist.core.training.finetune import finetune

    overrides = dict(parse_assignment(a) for a in args.set)
    res = finetune(FusionConfig.from_file(args.config), output_dir=args.output_dir, callbacks=[ProgressPrinter()],
                   resume_from=args.resume_from, init_from=args.init_from, **overrides)
    if res.metrics and int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in res.metrics.items() if k not in ("validation", "test")}
        for split in ("validation", "test"):
            if split in res.metrics:
                summary[split] = {k: v for k, v in res.metrics[split].items() if k not in ("per_class", "samples")}
        print(json.dumps(summary, indent=2))
        if "per_class" in res.metrics.get("test", {}):
            print(format_per_class(res.metrics["test"]["per_class"]))
        split = "test" if "test" in res.metrics else "validation"
        if res.metrics.get(split, {}).get("samples"):
            print(f"{split} examples:\n" + format_samples(res.metrics[split]["samples"]))
        print(f"model saved in {res.output_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved model on a data file and print the report; with no data file, score it per
    task on the bundled held-out mix (the starter's evaluation)."""
    from mmassist.core.training.finetune import evaluate_checkpoint

    if args.data is None and args.full:
        return full_report(args)
    if args.data is None:
        from mmassist.core.recipes import starter

        def progress(done: int, total: int) -> None:
            print(f"\r{done}/{total} answered", end="", file=sys.stderr, flush=True)

        scores = starter.evaluate(args.checkpoint, split=args.split, limit=args.limit, per_task=args.per_task,
                                  batch_size=args.batch_size, progress=progress)
        print(file=sys.stderr)
        if args.json:
            print(json.dumps({t: {"score": s.score, "correct": s.correct, "total": s.total,
                                  **({"questions": s.questions} if args.by_question and s.questions else {})}
                              for t, s in scores.items()}, indent=2))
        else:
            print(starter.report(scores, by_question=args.by_question))
        return 0
    def batches(done: int, total: int) -> None:
        print(f"\revaluating: {done}/{total} batches", end="\n" if done == total else "", file=sys.stderr, flush=True)

    metrics = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, progress=batches)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_class", "samples")}, indent=2))
    if "per_class" in metrics:
        print(format_per_class(metrics["per_class"]))
    if metrics.get("samples"):  # on standard error: standard output stays the report
        print("examples:\n" + format_samples(metrics["samples"]), file=sys.stderr)
    return 0


def cmd_train_starter(args: argparse.Namespace) -> int:
    """Rebuild the starter model from scratch on the bundled data."""
    import time

    from mmassist.core.recipes import starter
    from mmassist.core.training.callbacks import ProgressPrinter

    overrides = dict(parse_assignment(a) for a in args.set)
    start = time.time()
    print("stage one: pretraining the image and video backbones and tuning the text encoder's top layers on the "
          "training labels (about 8 minutes); "
          "stage two: the multi-task chat run (about an hour); stage three: a binding run from it (about half an "
          "hour)", flush=True)
    if args.install == "user":
        args.install = str(starter.user_root())
    res = starter.train(args.output_dir, install=args.install or False, callbacks=[ProgressPrinter()], **overrides)
    print(f"trained in {(time.time() - start) / 60:.1f} min; model in {res.output_dir}")
    if args.install:
        print(f"installed as the starter: {Path(args.install) / 'model'}; its held-out examples re-picked: "
              f"{Path(args.install) / 'examples'}")
    else:
        print(f"evaluate it: mmassist eval {res.output_dir}; make it the starter: add --install")
    return 0


def require_files(paths: Sequence[str]) -> None:
    """Files named on the command line must exist (checked before a model is loaded)."""
    from mmassist.core.errors import UnsupportedInputError

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UnsupportedInputError(f"no such file: {', '.join(missing)}")


def cmd_chat(args: argparse.Namespace) -> int:
    """Answer one prompt, streaming the answer."""
    from mmassist.core.runtime.assistant import Assistant

    require_files([*(args.image or []), *(args.video or []), *(args.media or [])])
    asst = Assistant.from_pretrained(args.model)
    for piece in asst.chat(args.prompt, images=args.image, videos=args.video, media=args.media, stream=True,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    """Caption files, one line each: path TAB caption."""
    from mmassist.core.runtime.assistant import Assistant

    require_files(args.files)
    asst = Assistant.from_pretrained(args.model)
    for path, caption in zip(args.files, asst.caption(list(args.files))):
        print(f"{path}\t{caption}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """Named entities with a token classification model: one line per entity (type, text, character span),
    or with --words a tag per word; texts from the arguments, else one per line of standard input."""
    from mmassist.core.runtime.assistant import Assistant

    asst = Assistant.from_pretrained(args.model)
    if args.words:
        tags = asst.tag(args.words)
        print(json.dumps(tags) if args.json else "\n".join(f"{w}\t{t}" for w, t in zip(args.words, tags)))
        return 0
    texts = [" ".join(args.text)] if args.text else [line.rstrip("\n") for line in sys.stdin]
    for text in texts:
        entities = asst.tag(text)
        if args.json:
            print(json.dumps(entities))
        else:
            for e in entities:
                print(f"{e['entity']}\t{e['text']}\t{e['start']}-{e['end']}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the web app (Chat, Caption, Fine-tune, Plugins) until interrupted."""
    from mmassist.ui.server import launch

    launch(args.model, host=args.host, port=args.port, auth=args.auth, upload_limit_mb=args.upload_limit_mb,
           runs_dir=args.runs_dir, api=args.api, api_key=args.api_key, media_dir=args.media_dir)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the OpenAI-compatible API until interrupted."""
    from mmassist.ui.api import serve

    serve(args.model or ["starter"], host=args.host, port=args.port, api_key=args.api_key,
          media_dir=args.media_dir, max_body_mb=args.max_body_mb)
    return 0


def parse_assignment(text: str) -> tuple[str, object]:
    """``training.lr=1e-3`` -> ("training.lr", 0.001); values are read as YAML (numbers, lists, true)."""
    from mmassist.core.schema import yaml_load
    from mmassist.core.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: write it as section.key=value, e.g. training.lr=1e-3")
    return key.strip(), yaml_load(value)


def full_report(args: argparse.Namespace) -> int:
    """``mmassist eval MODEL --full``: :func:`mmassist.core.recipes.smol.evaluate.assistant_report`."""
    from mmassist.core.recipes.smol.evaluate import assistant_report, format_assistant_report
    from mmassist.core.runtime.assistant import Assistant

    model = Assistant.from_pretrained(args.checkpoint)
    against = args.against
    if against is None and isinstance(model.cfg.decoder.path, str) and model.cfg.decoder.path in model.host.models:
        against = model.cfg.decoder.path  # e.g. smollm2-135m-instruct: the LM before it was taught to see
    rep = assistant_report(model, pretrained=against, per_task=args.per_task, conversations=args.conversations,
                           log=lambda part: print(f"evaluating: {part}", file=sys.stderr, flush=True))
    print(json.dumps(rep, indent=2) if args.json else format_assistant_report(rep))
    return 0


def format_samples(samples: list[dict[str, str]], width: int = 60) -> str:
    """An evaluation's sample predictions, one block each: the input, the reference and the prediction."""
    def cut(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    return "\n".join(f"  input:     {cut(s['input'])}\n  reference: {cut(s['reference'])}\n"
                     f"  predicted: {cut(s['prediction'])}" for s in samples)


def format_per_class(per_class: dict[str, dict[str, float]]) -> str:
    rows = [{"class": k, "precision": f"{v['precision']:.4f}", "recall": f"{v['recall']:.4f}", "f1": f"{v['f1']:.4f}",
             "support": str(v["support"])} for k, v in per_class.items()]
    return format_table(rows, ("class", "precision", "recall", "f1", "support"))


def format_table(rows: list[dict[str, str]], cols: Sequence[str]) -> str:
    """A plain-text table with a header line, columns as wide as their widest cell."""
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmassist", description="mmassist: a multimodal, plugin-based assistant SDK")
    parser.add_argument("--version", action="version", version=f"mmassist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("plugins", help="list the loaded encoders and any plugin that failed to load")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="show each failed plugin's traceback")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any plugin failed (for CI)")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("finetune", help="fine-tune a model from a YAML/JSON config")
    p.add_argument("config", help="the config file (see examples/configs/)")
    p.add_argument("-o", "--output-dir", help="run folder (default: runs/<task>-<time>)")
    p.add_argument("--resume-from", help="a checkpoints/step-N folder of an interrupted run")
    p.add_argument("--init-from", help="start from a trained model's weights: 'starter' or a model folder "
                                       "(the config must build the same model; a new head may be added)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.lr=3e-4 (repeatable)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="evaluate a saved model on a data file, or per task on the bundled data")
    p.add_argument("checkpoint", help="a model folder, or 'starter'")
    p.add_argument("data", nargs="?", help="a data file in a format the model's task reads; without it, "
                                           "the bundled held-out mix, scored per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--split", default="test", choices=("validation", "test"), help="bundled mix split (no data file)")
    p.add_argument("--limit", type=int, help="bundled mix: score only the first N records")
    p.add_argument("--json", action="store_true", help="bundled mix: print JSON instead of a table")
    p.add_argument("--by-question", action="store_true",
                   help="bundled mix: also score shape questions per kind of question (where is the <shape>?, ...)")
    p.add_argument("--per-task", type=int, help="bundled mix: score only the first N records of each task")
    p.add_argument("--full", action="store_true",
                   help="bundled mix: the assistant's whole report: tasks against their targets, general knowledge "
                        "(beside --against), ten-turn conversations, looping answers")
    p.add_argument("--conversations", type=int, default=20, help="with --full: ten-turn conversations to hold")
    p.add_argument("--against", default=None, metavar="MODEL",
                   help="with --full: the pretrained LM whose general knowledge the model must keep "
                        "(default: the model's own decoder when it is a registered name)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train-starter", help="rebuild the starter model from scratch (CPU is enough)")
    p.add_argument("-o", "--output-dir", default="runs/starter", help="run folder (default: runs/starter)")
    p.add_argument("--install", nargs="?", const="user", metavar="DIR",
                   help="install the result as the starter: into the user cache (what 'starter' then loads), or "
                        "into DIR (core/recipes/starter in a checkout replaces the shipped one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set training.epochs=2 (repeatable)")
    p.set_defaults(func=cmd_train_starter)

    p = sub.add_parser("chat", help="answer one prompt with a saved model")
    p.add_argument("prompt")
    p.add_argument("--model", default="starter", help="a model folder (default: the starter)")
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    p.add_argument("--video", action="append", default=[], help="a video file (repeatable)")
    p.add_argument("--media", action="append", default=[], help="a file of any modality the model takes")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("caption", help="caption image or video files with a saved model")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="starter", help="a model folder (default: the starter)")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("tag", help="find named entities with a token classification model")
    p.add_argument("model", help="a model folder fine-tuned with task.kind: token_classification")
    p.add_argument("text", nargs="*", help="the text (default: one text per line of standard input)")
    p.add_argument("--words", nargs="+", help="tag these words instead, one tag each")
    p.add_argument("--json", action="store_true", help="print JSON: a list of entities per text, or of tags")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("ui", help="serve the web app: chat, caption, fine-tune, plugins")
    p.add_argument("--model", help="the default model: a checkpoint folder (default: the bundled starter)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--upload-limit-mb", type=float, default=200.0, help="largest upload in MB (default: 200)")
    p.add_argument("--runs-dir", default="runs", help="where fine-tunes started in the app go (default: runs/)")
    p.add_argument("--api", action="store_true", help="also serve the OpenAI-compatible API at /v1 (the default "
                                                      "model, shared with the app)")
    p.add_argument("--api-key", help="require this bearer token on the API")
    p.add_argument("--media-dir", help="the folder API requests may name local media files in")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("serve", help="serve an OpenAI-compatible API (/v1/chat/completions) for one or more models")
    p.add_argument("--model", action="append", help="a model to serve: 'starter' or a checkpoint folder "
                                                    "(repeatable; default: starter); its id is what you give")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", help="require this bearer token (Authorization: Bearer <key>)")
    p.add_argument("--media-dir", help="the folder requests may name local media files in (default: none; "
                                       "send media as data: URLs)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MB (default: 32)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    set_offline_defaults()
    args = build_parser().parse_args(argv)
    from mmassist.core.errors import MMAssistError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MMAssistError as e:
        print(f"mmassist {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"mmassist {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
