"""The Gradio app: Chat, Caption, Fine-tune and Plugins tabs, built by :func:`build_app`.

Only this module and :mod:`ui.server` import gradio; the logic behind each tab lives in plain
modules (:mod:`ui.chat`, :mod:`ui.caption`, :mod:`ui.finetune_job`, ...) that tests can call
without a browser. Nothing happens at import: building the app creates the plugin host, and models
load on first use.

API endpoints (for ``gradio_client``): ``/chat``, ``/caption``, ``/models``, ``/start_finetune``,
``/stop_finetune``, ``/job_status``, ``/plugins``, ``/template``.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from core.config import FusionConfig, GenerationConfig
from core.configs import field_help
from core.errors import ConfigError, MMAssistError
from core.host import Host
from core.media import extensions_for
from ui import caption as captioning
from ui import chat as chatting
from ui.datasets import DATA_SUFFIXES, prepare_dataset
from ui.finetune_job import JobRunner, Snapshot
from ui.forms import FormField, form_fields, get_path, set_path
from ui.models import STARTER, ModelStore
from ui.templates import bundled_configs, bundled_yaml, template_yaml

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT_MB = 200
DEFAULT_RUNS_DIR = "runs"
TEMPLATE_PREFIX = "template: "
EXAMPLE_PREFIX = "example: "


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into a message in the page (gr.Error); the app keeps serving.

    Anything that is not an :class:`MMAssistError` is a bug: its traceback goes to the server log.
    """
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except MMAssistError as e:
        raise gr.Error(page_text(str(e)), title=type(e).__name__, print_exception=False) from None
    except Exception as e:
        log.exception("unexpected error in the UI")
        raise gr.Error(page_text(f"unexpected error ({type(e).__name__}: {e}); see the server log"),
                       title="Internal error", print_exception=False) from None


def page_text(message: str) -> str:
    """An error message for the page: uploads named by their file name, not their server cache path."""
    from gradio.utils import get_upload_folder

    cache = re.escape(str(Path(get_upload_folder()).resolve()).rstrip("/"))
    message = re.sub(cache + r"/[0-9a-f]{16,}/", "", message)
    return html.escape(message)


def media_file_types(host: Host) -> list[str]:
    """File extensions of every non-text modality the installed plugins read (for upload boxes)."""
    modalities = dict.fromkeys(spec.modality for spec in host.encoders if spec.modality != "text")
    return [ext for m in modalities for ext in extensions_for(host.accepted_mime_types(m))]


def build_app(model: str | None = None, *, host: Host | None = None,
              upload_limit_mb: float = DEFAULT_UPLOAD_LIMIT_MB, runs_dir: str | Path = DEFAULT_RUNS_DIR,
              chat_concurrency: int = 4, max_queue: int = 64) -> "gr.Blocks":  # noqa: F821
    """Build the web app (not launched; see :func:`ui.server.launch`).

    :param model: the default model: ``"starter"`` (when None) or a checkpoint folder.
    :param host: the plugin host (default: a new :class:`core.Host`).
    :param upload_limit_mb: the largest upload, shown in the page; :func:`ui.server.launch` enforces it.
    :param runs_dir: where fine-tunes started in the app are written, and listed from for Chat.
    :param chat_concurrency: chat and caption requests served at once (the rest wait in the queue).
    :param max_queue: requests that may wait; more are refused with "queue full".
    """
    import gradio as gr

    host = host or Host()
    store = ModelStore(host, runs_dir, default=model)
    runner = JobRunner(host)
    runs_dir = Path(runs_dir)
    media_types = media_file_types(host)
    media_kinds = list(dict.fromkeys(spec.modality for spec in host.encoders if spec.modality != "text"))
    gen_help = field_help(GenerationConfig)
    gen_defaults = GenerationConfig()

    with gr.Blocks(title="mmassist", analytics_enabled=False) as demo:
        demo.upload_limit_mb = upload_limit_mb  # read by ui.server.launch
        gr.Markdown("## mmassist — a multimodal assistant you can fine-tune")
        with gr.Row():
            model_box = gr.Dropdown(
                choices=store.choices(), value=store.key(None), allow_custom_value=True, label="Model",
                info="the bundled starter, a model fine-tuned here, or type the path of any checkpoint folder",
                scale=5, elem_id="model-picker")
            with gr.Column(scale=0, min_width=160):
                refresh = gr.Button("Refresh list", size="sm", elem_id="refresh-models")

        def list_models(current: str | None = None) -> dict:
            return gr.Dropdown(choices=store.choices(), value=current or store.key(None))

        refresh.click(list_models, [model_box], [model_box], api_visibility="undocumented")

        with gr.Tabs() as tabs:
            # -- Chat ------------------------------------------------------------------------------
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                with gr.Row():
                    temperature = gr.Slider(0.0, 2.0, value=gen_defaults.temperature, step=0.05, label="Temperature",
                                            info=gen_help["temperature"])
                    top_p = gr.Slider(0.05, 1.0, value=gen_defaults.top_p, step=0.05, label="Top-p",
                                      info=gen_help["top_p"])
                    max_new_tokens = gr.Slider(1, 1024, value=gen_defaults.max_new_tokens, step=1,
                                               label="Max new tokens", info=gen_help["max_new_tokens"])
                chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chatbot", buttons=["copy"],
                                     placeholder="Ask something, or attach an image or a video and press Enter.")
                textbox = gr.MultimodalTextbox(
                    file_types=media_types, file_count="multiple", sources=["upload"], elem_id="chat-input",
                    placeholder=f"Type a message, attach {'/'.join(media_kinds) or 'media'} files "
                                f"(up to {upload_limit_mb:g} MB each), press Enter", submit_btn=True, stop_btn=True)

                def respond(message: dict, history: list, model: str, temperature: float, top_p: float,
                            max_new_tokens: float) -> Iterator[str]:
                    """Answer a message (text and files) in a conversation, streaming the answer."""
                    with user_errors():
                        loaded = store.get(model)
                        yield from chatting.answer(loaded, host, message, history, temperature=float(temperature),
                                                   top_p=float(top_p), max_new_tokens=int(max_new_tokens))

                gr.ChatInterface(respond, multimodal=True, chatbot=chatbot, textbox=textbox,
                                 additional_inputs=[model_box, temperature, top_p, max_new_tokens],
                                 api_name="chat", concurrency_limit=chat_concurrency, fill_height=False,
                                 autofocus=False)

            # -- Caption ---------------------------------------------------------------------------
            with gr.Tab("Caption", id="caption", elem_id="tab-caption"):
                cap_files = gr.File(label="Images or videos", file_count="multiple", file_types=media_types,
                                    elem_id="caption-files")
                cap_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                cap_table = gr.Dataframe(headers=["file", "caption"], label="Captions", interactive=False,
                                         wrap=True, elem_id="caption-table")
                cap_downloads = gr.File(label="Download (CSV, JSONL)", file_count="multiple", interactive=False)

                def caption(files: list[str] | None, model: str) -> tuple[dict, list[str]]:
                    """Caption each file; the table and the CSV / JSONL downloads."""
                    with user_errors():
                        rows = captioning.caption_files(store.get(model), list(files or []))
                        csv_path, jsonl_path = captioning.write_exports(rows)
                    headers = ["file", "caption"] + (["error"] if any(r.error for r in rows) else [])
                    table = {"headers": headers, "data": [[getattr(r, h) for h in headers] for r in rows]}
                    return table, [str(csv_path), str(jsonl_path)]

                cap_button.click(caption, [cap_files, model_box], [cap_table, cap_downloads], api_name="caption",
                                 concurrency_limit=chat_concurrency, concurrency_id="caption")

            # -- Fine-tune -------------------------------------------------------------------------
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                fields = form_fields()
                starts = [TEMPLATE_PREFIX + t for t in ("caption", "chat", "vqa", "classification")] + \
                         [EXAMPLE_PREFIX + name for name in bundled_configs()]
                first_yaml = template_yaml("caption")
                first_values = form_values(first_yaml, fields)
                with gr.Row():
                    start_from = gr.Dropdown(starts, value=starts[0], label="Start from",
                                             info="a small template per task, or a bundled example config")
                    dataset = gr.File(label="Dataset: a data file, or a .zip of a captions folder or of a data "
                                            "file with its media", file_types=[".zip", *DATA_SUFFIXES],
                                      height=120, elem_id="dataset-file")
                    data_path = gr.Textbox(label="…or a dataset path on the server",
                                           info="used when nothing is uploaded; empty: data.train of the YAML",
                                           placeholder="/data/my-captions")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        inputs = {}
                        for row in range(0, len(fields), 3):
                            with gr.Row():
                                for f, v in zip(fields[row: row + 3], first_values[row: row + 3]):
                                    inputs[f.param] = form_input(gr, f, v)
                    with gr.Column(scale=2):
                        config_yaml = gr.Code(first_yaml, language="yaml", label="Config (YAML): the form's "
                                              "fields override it", lines=24, max_lines=32, interactive=True,
                                              elem_id="config-yaml")
                with gr.Row():
                    start = gr.Button("Start fine-tuning", variant="primary", elem_id="start-finetune")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-finetune")
                status = gr.HTML(render_status(None), elem_id="finetune-status")
                plot = gr.LinePlot(None, x="step", y="value", color="series", title="Loss and metrics",
                                   x_title="step", y_title="value", height=300, elem_id="loss-plot")
                report = gr.JSON(label="Evaluation report", elem_id="eval-report")
                use_model = gr.Button("Use this model in Chat", visible=False, elem_id="use-model")
                timer = gr.Timer(1.0, active=False)
                field_inputs = list(inputs.values())

                def load_start(choice: str) -> list:
                    with user_errors():
                        if choice.startswith(EXAMPLE_PREFIX):
                            text = bundled_yaml(choice[len(EXAMPLE_PREFIX):])
                        else:
                            text = template_yaml(choice[len(TEMPLATE_PREFIX):])
                    return [text, *form_values(text, fields)]

                start_from.input(load_start, [start_from], [config_yaml, *field_inputs], api_name="template")

                def sync_yaml(text: str, *values: Any) -> str:
                    """A form edit, written into the YAML (left as is while the YAML does not parse)."""
                    try:
                        return apply_form(text, fields, values, dump=True)
                    except MMAssistError:
                        return gr.skip()

                for comp in field_inputs:
                    comp.input(sync_yaml, [config_yaml, *field_inputs], [config_yaml], api_visibility="undocumented",
                               queue=False, show_progress="hidden")

                def sync_form(text: str) -> list:
                    try:
                        return form_values(text, fields)
                    except MMAssistError:
                        return [gr.skip() for _ in fields]

                config_yaml.blur(sync_form, [config_yaml], field_inputs, api_visibility="undocumented", queue=False,
                                 show_progress="hidden")

                def start_finetune(dataset: str | None, data_path: str, config_yaml: str, **form: Any) -> list:
                    """Start a fine-tune from the YAML, the form's values over it, and the dataset given."""
                    with user_errors():
                        values = [form.get(f.param, None) for f in fields]
                        data = apply_form(config_yaml, fields, values, dump=False)
                        out = new_run_dir(runs_dir, get_path(data, "task.kind") or "run")
                        found = prepare_dataset(dataset, data_path, out / "data")
                        for split, path in found.items():
                            set_path(data, f"data.{split}", path)
                        if not get_path(data, "data.train"):
                            raise ConfigError("no training data: upload a dataset, give a path on the server, "
                                              "or set data.train in the YAML")
                        cfg = FusionConfig.from_dict(data)
                        job = runner.start(cfg, out)
                    return [render_status(job.snapshot()), None, None, gr.Timer(active=True),
                            gr.Button(visible=False)]

                start.click(start_finetune, [dataset, data_path, config_yaml], [status, plot, report, timer, use_model],
                            inputs_kwargs=inputs, api_name="start_finetune", concurrency_limit=1,
                            concurrency_id="finetune")

                def stop_finetune() -> str:
                    """Ask the running fine-tune to stop after its current step."""
                    stopped = runner.stop()
                    job = runner.job
                    if not stopped:
                        gr.Info("no fine-tune is running")
                    return render_status(job.snapshot() if job else None)

                stop.click(stop_finetune, None, [status], api_name="stop_finetune", concurrency_limit=None)

                def poll() -> list:
                    job = runner.job
                    snap = job.snapshot() if job else None
                    if snap is None:
                        return [render_status(None), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(),
                                gr.skip()]
                    final = not snap.running
                    return [
                        render_status(snap),
                        plot_frame(snap.points, snap.series),
                        report_of(snap) if final else gr.skip(),
                        gr.Timer(active=not final),
                        gr.Button(visible=final and snap.phase != "failed"),
                        gr.Dropdown(choices=store.choices()) if final else gr.skip(),
                    ]

                poll_outputs = [status, plot, report, timer, use_model, model_box]
                timer.tick(poll, None, poll_outputs, api_visibility="undocumented", concurrency_limit=None,
                           show_progress="hidden")
                demo.load(poll, None, poll_outputs, api_visibility="undocumented", concurrency_limit=None)

                def job_status() -> dict:
                    """The fine-tune's progress: phase, step, max_steps, loss, points, metrics, output_dir, error."""
                    job = runner.job
                    if job is None:
                        return {"phase": "idle"}
                    return dataclasses.asdict(job.snapshot())

                gr.api(job_status, api_name="job_status", concurrency_limit=None)

                def use_in_chat() -> list:
                    job = runner.job
                    if job is None:
                        return [gr.skip(), gr.skip()]
                    path = str(job.output_dir.resolve())
                    return [gr.Dropdown(choices=store.choices(), value=path), gr.Tabs(selected="chat")]

                use_model.click(use_in_chat, None, [model_box, tabs], api_visibility="undocumented")

            # -- Plugins ---------------------------------------------------------------------------
            with gr.Tab("Plugins", id="plugins", elem_id="tab-plugins"):
                gr.Markdown("Encoders registered by the installed plugins. Install a plugin "
                            "(`pip install mmassist-<thing>`) and restart to add a modality.")
                enc_table = gr.Dataframe(label="Loaded encoders", interactive=False, wrap=True,
                                         elem_id="plugins-table")
                failed_table = gr.Dataframe(label="Plugins that failed to load", interactive=False, wrap=True,
                                            elem_id="failed-plugins-table")

                def plugins() -> tuple[dict, dict]:
                    """The loaded encoders, and the plugins that failed with their reasons."""
                    return plugin_tables(host)

                demo.load(plugins, None, [enc_table, failed_table], api_name="plugins")

        def models() -> list[str]:
            """The model picker's choices: 'starter', the default model and the models fine-tuned here."""
            return [value for _, value in store.choices()]

        gr.api(models, api_name="models")

    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    demo.mmassist_store = store  # for tests and embedding
    demo.mmassist_runner = runner
    return demo


# -- helpers (no gradio state) ------------------------------------------------------------------


def form_input(gr, f: FormField, value: Any):
    """The gradio input for one config field, labelled by its path and helped by its help text."""
    common = {"label": f.path, "info": f.help, "value": f.to_form(value), "elem_id": "field-" + f.param}
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), **common)
    if f.kind == "bool":
        return gr.Checkbox(**common)
    if f.kind in ("int", "float"):
        return gr.Number(precision=0 if f.kind == "int" else None, **common)
    if f.kind == "list":
        return gr.Textbox(placeholder="comma-separated", **{**common, "info": f.help + " (comma-separated)"})
    return gr.Textbox(**common)


def parse_yaml(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"the config YAML does not parse{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError("the config YAML must be a mapping of sections (encoders, decoder, task, ...)")
    return data


def form_values(text: str, fields: list[FormField]) -> list[Any]:
    """The form's values as the YAML (completed with the config defaults) has them."""
    data = parse_yaml(text)
    try:
        full = FusionConfig.from_dict(data).to_dict()
    except MMAssistError:
        full = data
    return [f.to_form(get_path(full, f.path)) for f in fields]


def apply_form(text: str, fields: list[FormField], values: Any, *, dump: bool) -> Any:
    """The YAML's config with the form's values over it: a dict, or YAML text when ``dump``."""
    import yaml

    data = parse_yaml(text)
    for f, value in zip(fields, values):
        set_path(data, f.path, f.from_form(value))
    if not dump:
        return data
    header = "".join(line + "\n" for line in (text or "").splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(data, sort_keys=False)


def new_run_dir(runs_dir: Path, task: str) -> Path:
    """A new folder under ``runs_dir`` named after the task and the time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = runs_dir / f"{task}-{stamp}"
    n = 2
    while out.exists():
        out = runs_dir / f"{task}-{stamp}-{n}"
        n += 1
    out.mkdir(parents=True)
    return out


def plot_frame(points: list[dict[str, Any]], series: list[str] = ()):
    """The plot's data: None until there is a point, then typed columns with every planned series.

    Gradio 6's plot fixes its axis types and colour domain from the first data it draws, so it
    must not start from an empty frame, and each line the run will draw is present (as one
    blank point) from the start.
    """
    import pandas as pd

    if not points:
        return None
    drawn = {p["series"] for p in points}
    points = points + [{"step": points[0]["step"], "value": float("nan"), "series": s}
                       for s in series if s not in drawn]
    return pd.DataFrame({
        "step": pd.Series([p["step"] for p in points], dtype="int64"),
        "value": pd.Series([p["value"] for p in points], dtype="float64"),
        "series": pd.Series([p["series"] for p in points], dtype="str"),
    })


def render_status(snap: Snapshot | None) -> str:
    """The progress bar and one line of numbers, as HTML."""
    if snap is None:
        return "<p id='job-phase' data-phase='idle'>No fine-tune yet. Choose a task and a dataset, then Start.</p>"
    done = snap.step / snap.max_steps if snap.max_steps else 0.0
    eta = (snap.elapsed / done - snap.elapsed) if 0 < done < 1 and snap.running else None
    loss = f"{snap.loss:.4f}" if snap.loss is not None else "–"
    phase = {"preparing": "preparing data and model", "training": "training",
             "finishing": "evaluating and saving", "done": "done", "stopped": "stopped",
             "failed": "failed"}[snap.phase]
    if snap.stop_requested and snap.running:
        phase = "stopping after this step"
    parts = [f"step {snap.step} / {snap.max_steps or '?'}", f"loss {loss}", f"{snap.elapsed:.0f} s"]
    if eta is not None:
        parts.append(f"about {eta:.0f} s left")
    out = (f"<div id='job-phase' data-phase='{snap.phase}' data-step='{snap.step}'>"
           f"<progress max='{max(snap.max_steps, 1)}' value='{snap.step}' style='width:100%'></progress>"
           f"<p><b>{html.escape(snap.run_name)}</b>: {phase} · {' · '.join(parts)}</p>")
    if snap.error:
        out += f"<p style='color:#c00'>{html.escape(snap.error)}</p>"
    elif not snap.running:
        out += (f"<p>Model saved in <code>{html.escape(snap.output_dir)}</code>; pick it in the Model box "
                "or press “Use this model in Chat”.</p>")
    return out + "</div>"


def report_of(snap: Snapshot) -> dict[str, Any] | None:
    if snap.error:
        return {"error": snap.error}
    return snap.metrics


def plugin_tables(host: Host) -> tuple[dict, dict]:
    """The Plugins tab's two tables, as Dataframe values."""
    enc_headers = ["encoder", "modality", "accepted types", "file extensions", "distribution", "version",
                   "description"]
    rows = []
    for spec in host.encoders:
        exts = extensions_for(list(spec.mime_types)) if spec.modality != "text" else []
        rows.append([spec.name, spec.modality, ", ".join(spec.mime_types), " ".join(exts), spec.distribution,
                     spec.version, spec.description])
    failed_headers = ["plugin", "distribution", "version", "stage", "error"]
    failed = [[f.name, f.distribution, f.version, f.stage, f.error] for f in host.failed_plugins]
    return {"headers": enc_headers, "data": rows}, {"headers": failed_headers, "data": failed}


__all__ = ["build_app", "user_errors", "STARTER", "DEFAULT_UPLOAD_LIMIT_MB"]
