"""The Gradio app: Chat, Caption, Entities, Fine-tune and Plugins tabs, built by :func:`build_app`.

Only the ``ui`` package imports gradio, and only when an app is built: the logic behind the tabs
lives in plain modules (:mod:`mmassist.ui.chat`, :mod:`mmassist.ui.caption`, :mod:`mmassist.ui.finetune_job`...) that work
without a browser. Building the app creates the plugin host; models load on first use.

API endpoints, for ``gradio_client``: ``/chat``, ``/caption``, ``/tag``, ``/models``, ``/start_finetune``,
``/stop_finetune``, ``/job_status``, ``/template`` and ``/plugins``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mmassist.core.runtime.config import GenerationConfig
from mmassist.core.schema import field_help
from mmassist.core.contract.host import Host
from mmassist.core.contract.media import extensions_for
from mmassist.ui import caption as captioning
from mmassist.ui import chat as chatting
from mmassist.ui import tagging
from mmassist.ui.finetune_job import JobRunner
from mmassist.ui.models import STARTER, ModelStore
from mmassist.ui.shared import Shared, media_file_types, user_errors

DEFAULT_UPLOAD_LIMIT_MB = 200
# What the starter can see, shown in the Chat tab while it is picked.
STARTER_SCOPE = ("The starter model sees what it was trained on: pictures of simple coloured shapes, handwritten "
                 "digits and short clips of a moving shape, like its examples, and it judges movie reviews. A "
                 "photo is outside that: it will describe it as shapes.")
DEFAULT_RUNS_DIR = "runs"
MAX_NEW_TOKENS = 1024  # the Chat slider's top


def build_app(model: str | None = None, *, host: Host | None = None,
              upload_limit_mb: float = DEFAULT_UPLOAD_LIMIT_MB, runs_dir: str | Path = DEFAULT_RUNS_DIR,
              concurrency: int = 4, max_queue: int = 64):
    """Build the web app, a ``gr.Blocks`` (not launched: see :func:`mmassist.ui.server.launch`).

    :param model: the default model: ``"starter"`` (when None) or a checkpoint folder.
    :param host: the plugin host (default: a new :class:`mmassist.core.Host`).
    :param upload_limit_mb: the largest upload; shown in the page, enforced by :func:`mmassist.ui.server.launch`.
    :param runs_dir: where fine-tunes started in the app go, and where Chat finds them.
    :param concurrency: chat and caption requests served at once; the others wait in the queue.
    :param max_queue: requests that may wait; more are refused ("queue full").
    """
    import gradio as gr

    from mmassist.ui.finetune_tab import finetune_tab

    host = host or Host()
    shared = Shared(host=host, store=ModelStore(host, runs_dir, default=model), runner=JobRunner(host),
                    runs_dir=Path(runs_dir), media_types=media_file_types(host), upload_limit_mb=upload_limit_mb,
                    concurrency=concurrency)
    store = shared.store
    # delete_cache: uploads and outputs older than a day are removed, checked every hour
    with gr.Blocks(title="mmassist", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        demo.upload_limit_mb = upload_limit_mb  # read by ui.server.launch
        demo.shared = shared  # ui.server.launch serves the API (--api) on the models this app loaded
        gr.Markdown("## mmassist — a multimodal assistant you can fine-tune")
        with gr.Row():
            shared.model_box = gr.Dropdown(
                choices=store.choices(), value=store.key(None), allow_custom_value=True, label="Model",
                info="the bundled starter, a model fine-tuned here, or type the path of any checkpoint folder",
                scale=5, elem_id="model-picker")
            with gr.Column(scale=0, min_width=160):
                refresh = gr.Button("Refresh list", size="sm", elem_id="refresh-models")
        refresh.click(lambda current: gr.Dropdown(choices=store.choices(), value=current or store.key(None)),
                      [shared.model_box], [shared.model_box], api_visibility="undocumented")

        with gr.Tabs() as shared.tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat_tab(gr, shared)
            with gr.Tab("Caption", id="caption", elem_id="tab-caption"):
                caption_tab(gr, shared)
            with gr.Tab("Entities", id="entities", elem_id="tab-entities"):
                entities_tab(gr, shared)
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                finetune_tab(gr, shared, demo)
            with gr.Tab("Plugins", id="plugins", elem_id="tab-plugins"):
                plugins_tab(gr, shared, demo)

        def models() -> list[str]:
            """The model picker's choices: the default model, 'starter' and the models fine-tuned here."""
            return [value for _, value in store.choices()]

        gr.api(models, api_name="models")

    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    demo.mmassist = shared  # for tests and for embedding the app
    return demo


def starter_examples(shared: Shared) -> list[dict[str, Any]]:
    """The starter's held-out examples as message-box values (none when the starter is not installed).

    The media are copied to a folder under the system's temporary folder, one of the places Gradio
    serves files from, since the package's own folder may not be.
    """
    import hashlib
    import json
    import shutil
    import tempfile

    from mmassist.core.recipes import starter

    if not starter.is_installed():
        return []
    index = starter.examples_dir() / "examples.json"
    if not index.is_file():
        return []
    examples = json.loads(index.read_text(encoding="utf-8"))
    folder = Path(tempfile.gettempdir()) / "mmassist-examples" / hashlib.sha256(index.read_bytes()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for e in examples:
        files = []
        if e.get("file"):
            target = folder / e["file"]
            if not target.is_file():
                shutil.copy2(index.parent / e["file"], target)
            files.append(str(target))
        out.append({"text": e["question"], "files": files})
    return out


def chat_tab(gr, shared: Shared) -> None:
    """Generation settings, the conversation and the message box (text and attachments)."""
    gen_help, gen_defaults = field_help(GenerationConfig), shared.store.generation(None)
    media_kinds = list(dict.fromkeys(s.modality for s in shared.host.encoders if s.modality != "text"))
    with gr.Accordion("Parameters", open=False, elem_id="chat-parameters"):
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=gen_defaults.temperature, step=0.05, label="Temperature",
                                    info=gen_help["temperature"])
            top_p = gr.Slider(0.05, 1.0, value=gen_defaults.top_p, step=0.05, label="Top-p",
                              info=gen_help["top_p"])
            max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, step=1,
                                       value=min(gen_defaults.max_new_tokens, MAX_NEW_TOKENS),
                                       label="Max new tokens", info=gen_help["max_new_tokens"])
        system_prompt = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt",
                                   info="put before the conversation; empty: the model's own")
    kinds = "/".join(media_kinds) or "media"
    chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chatbot", buttons=["copy"],
                         placeholder=f"Ask something, or attach {kinds} files and press Enter.")
    textbox = gr.MultimodalTextbox(
        file_types=shared.media_types, file_count="multiple", sources=["upload"], elem_id="chat-input",
        placeholder=f"Type a message, attach {kinds} files (up to {shared.upload_limit_mb:g} MB each), "
                    "press Enter", submit_btn=True, stop_btn=True)
    generation = [temperature, top_p, max_new_tokens]

    def model_defaults(model: str) -> list[Any]:
        """The sliders at the picked model's own decoding defaults (its config's ``generation``)."""
        gen = shared.store.generation(model)
        return [gen.temperature, gen.top_p, min(gen.max_new_tokens, MAX_NEW_TOKENS)]

    shared.model_box.change(model_defaults, [shared.model_box], generation, api_visibility="undocumented",
                            queue=False, show_progress="hidden")

    def answer(message: dict, history: list, model: str, temperature: float, top_p: float,
               max_new_tokens: float, system: str = "") -> Iterator[str]:
        return chatting.answer(shared.store.get(model), shared.host, message, history, system_prompt=system or "",
                               temperature=float(temperature), top_p=float(top_p),
                               max_new_tokens=int(max_new_tokens))

    def respond(message: dict, history: list, model: str, temperature: float, top_p: float,
                max_new_tokens: float, system: str) -> Iterator[Any]:
        """The Chat tab: stream the answer. A mistake becomes an error note in the conversation
        and a toast, not a raised error: ChatInterface leaves its textbox disabled after one."""
        shown = ""
        try:
            with user_errors():
                for shown in answer(message, history, model, temperature, top_p, max_new_tokens, system):
                    yield shown
        except gr.Error as e:
            gr.Warning(e.message, title=e.title)  # the toast, as for the other tabs
            note = gr.ChatMessage(content=e.message, metadata={"title": chatting.ERROR_TITLE})
            yield [shown, note] if shown else note

    # The starter's examples are cards in the empty conversation; a click sends one. They belong to the
    # starter: picking another model hides them, picking the starter again shows them.
    examples = starter_examples(shared)
    gr.ChatInterface(respond, multimodal=True, chatbot=chatbot, textbox=textbox,
                     examples=[[e] for e in examples] or None,
                     run_examples_on_click=True, cache_examples=False,
                     additional_inputs=[shared.model_box, *generation, system_prompt], api_visibility="private",
                     concurrency_limit=shared.concurrency, fill_height=False, autofocus=False)
    # What the starter can see, said while it is picked: a photo is outside its training.
    scope = gr.Markdown(STARTER_SCOPE, elem_id="model-scope", visible=shared.store.key(None) == STARTER)
    shared.model_box.change(lambda model: gr.Markdown(visible=shared.store.key(model) == STARTER),
                            [shared.model_box], [scope], api_visibility="undocumented", queue=False,
                            show_progress="hidden")
    if examples:
        for card in chatbot.examples:
            card.pop("icon", None)  # as the cards an update sends (an "Aa" icon has no file to send)

        def examples_for(model: str) -> Any:
            return gr.Chatbot(examples=[dict(e, files=list(e["files"])) for e in examples]
                              if shared.store.key(model) == STARTER else None)

        if shared.store.key(None) != STARTER:
            chatbot.examples = None  # the first page shows the default model, not the starter

        shared.model_box.change(examples_for, [shared.model_box], [chatbot], api_visibility="undocumented",
                                queue=False, show_progress="hidden")

    # /chat for scripts: the same answers, errors raised; follow-ups within a client session.
    api_message = gr.MultimodalTextbox(file_types=shared.media_types, file_count="multiple", visible=False)
    api_answer = gr.Textbox(visible=False)
    api_history = gr.State([])

    def chat(message: dict, model: str, temperature: float, top_p: float, max_new_tokens: float,
             history: list) -> Iterator[tuple[str, Any]]:
        """Answer a message ({"text", "files"}) after this session's earlier turns, streaming the answer."""
        shown = ""
        with user_errors():
            for shown in answer(message, history, model, temperature, top_p, max_new_tokens):
                yield shown, gr.skip()
        user = {"role": "user", "content": [{"path": p} for p in message.get("files") or []]
                + [message.get("text") or ""]}
        yield shown, [*history, user, {"role": "assistant", "content": shown}]

    gr.Button(visible=False).click(chat, [api_message, shared.model_box, *generation, api_history],
                                   [api_answer, api_history], api_name="chat",
                                   concurrency_limit=shared.concurrency, concurrency_id="chat")


def caption_tab(gr, shared: Shared) -> None:
    """Drop files, get a table of captions and CSV / JSONL downloads."""
    cap_files = gr.File(label="Images or videos", file_count="multiple", file_types=shared.media_types,
                        elem_id="caption-files")
    cap_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
    cap_table = gr.Dataframe(headers=["file", "caption"], label="Captions", interactive=False,
                             wrap=True, column_widths=["30%", "70%"], elem_id="caption-table")
    cap_downloads = gr.File(label="Download (CSV, JSONL)", file_count="multiple", interactive=False)

    def caption(files: list[str] | None, model: str) -> tuple[dict, list[str]]:
        """Caption each file; the table and the CSV / JSONL downloads."""
        with user_errors():
            rows = captioning.caption_files(shared.store.get(model), list(files or []))
            csv_path, jsonl_path = captioning.write_exports(rows)
        # A file that failed says why in its caption cell, where the eye is (the downloads keep an error column).
        table = {"headers": ["file", "caption"],
                 "data": [[r.file, r.caption if not r.error else f"⚠ not captioned: {r.error}"] for r in rows]}
        return table, [str(csv_path), str(jsonl_path)]

    def caption_in_page(files: list[str] | None, model: str) -> tuple[Any, Any]:
        """The button: a mistake (no files, a model that cannot caption) is a toast, and the table and
        downloads stay as they were instead of each showing a red "Error"."""
        try:
            return caption(files, model)
        except gr.Error as e:
            gr.Warning(e.message, title=e.title)
            return gr.skip(), gr.skip()

    cap_button.click(caption_in_page, [cap_files, shared.model_box], [cap_table, cap_downloads],
                     api_visibility="undocumented", concurrency_limit=shared.concurrency, concurrency_id="caption")
    # /caption for scripts: the same, its errors raised
    gr.Button(visible=False).click(caption, [cap_files, shared.model_box], [cap_table, cap_downloads],
                                   api_name="caption", concurrency_limit=shared.concurrency,
                                   concurrency_id="caption")


def entities_tab(gr, shared: Shared) -> None:
    """Named entities highlighted in a text, with a model fine-tuned for token classification."""
    gr.Markdown("Find people, places, organisations... in a text with a model fine-tuned for token "
                "classification (the *Named entities* template of the Fine-tune tab); pick it in the Model box.")
    text = gr.Textbox(label="Text", lines=4, elem_id="entities-text",
                      placeholder="Ada Lovelace worked with Charles Babbage in London.")
    button = gr.Button("Find entities", variant="primary", elem_id="entities-button")
    shown = gr.HighlightedText(label="Entities", combine_adjacent=False, show_legend=True, elem_id="entities-out")

    def tag(value: str, model: str) -> dict:
        """The text with its entities: {"text", "entities": [{"entity", "text", "start", "end"}]}."""
        with user_errors():
            return tagging.find_entities(shared.store.get(model), value)

    gr.on([button.click, text.submit], tag, [text, shared.model_box], [shown], api_name="tag",
          concurrency_limit=shared.concurrency, concurrency_id="tag")


def plugins_tab(gr, shared: Shared, demo) -> None:
    """The loaded encoders, and the plugins that failed with their reasons."""
    gr.Markdown("Encoders registered by the installed plugins. Install a plugin "
                "(`pip install mmassist-<thing>`) and restart to add a modality.")
    enc_table = gr.Dataframe(label="Loaded encoders", interactive=False, wrap=True,
                             elem_id="plugins-table")
    failed_table = gr.Dataframe(label="Plugins that failed to load", interactive=False, wrap=True,
                                elem_id="failed-plugins-table")

    def plugins() -> tuple[dict, dict]:
        """The loaded encoders, and the plugins that failed with their reasons."""
        return plugin_tables(shared.host)

    demo.load(plugins, None, [enc_table, failed_table], api_name="plugins")


def plugin_tables(host: Host) -> tuple[dict, dict]:
    """The Plugins tab's two tables, as Dataframe values."""
    enc_headers = ["encoder", "modality", "accepted types", "file extensions", "distribution", "version",
                   "description"]
    rows = []
    for spec in host.encoders:
        exts = list(dict.fromkeys([*spec.extensions, *extensions_for(list(spec.mime_types))])) \
            if spec.modality != "text" else []
        rows.append([spec.name, spec.modality, ", ".join(spec.mime_types), " ".join(exts), spec.distribution,
                     spec.version, spec.description])
    failed_headers = ["plugin", "distribution", "version", "stage", "error"]
    failed = [[f.name, f.distribution, f.version, f.stage, f.error] for f in host.failed_plugins]
    failed += [["", "", "", "warning", w] for w in host.warnings]
    if not failed:
        failed = [["none", "", "", "", "every installed plugin loaded"]]
    return {"headers": enc_headers, "data": rows}, {"headers": failed_headers, "data": failed}
