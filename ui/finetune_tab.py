"""The Fine-tune tab: a form built from the config dataclasses, the whole YAML, a dataset, and a
job to start, watch (progress bar, live loss / metric plot) and stop.

The form and the YAML edit one config: a form edit is written into the YAML, leaving the YAML
fills the form, and at Start the form's fields win over the YAML. The dataset given (an upload or
a server path) sets ``data.train``. Progress comes from :class:`mmassist.ui.finetune_job.ProgressRecorder`,
polled by a timer that runs only while a job does.
"""

from __future__ import annotations

import dataclasses
import html
import shutil
from pathlib import Path
from typing import Any, Sequence

from mmassist.core.runtime.config import FusionConfig
from mmassist.core.runtime.config import TASKS
from mmassist.core.schema import yaml_load
from mmassist.core.errors import ConfigError, MMAssistError
from mmassist.ui.datasets import DATA_SUFFIXES, prepare_dataset
from mmassist.ui import runs
from mmassist.ui.finetune_job import Snapshot
from mmassist.ui.forms import FormField, form_fields, get_path, set_path
from mmassist.ui.shared import Shared, user_errors
from mmassist.ui.templates import bundled_configs, bundled_yaml, template_yaml

TEMPLATE_PREFIX = "template: "
EXAMPLE_PREFIX = "example: "


def finetune_tab(gr, shared: Shared, demo) -> None:
    """Build the tab's components and events inside the current ``gr.Tab``."""
    fields = form_fields()
    starts = [TEMPLATE_PREFIX + t for t in TASKS] + \
             [EXAMPLE_PREFIX + name for name in bundled_configs()]
    first_yaml = template_yaml("caption")
    first_values = form_values(first_yaml, fields)
    with gr.Row():
        start_from = gr.Dropdown(starts, value=starts[0], label="Config",
                                 info="a small template per task, or a bundled example config")
        init_from = gr.Dropdown(model_choices(shared), value="", label="Start from the weights of",
                                info="a new model (the config as it is), or a trained one: its config "
                                     "replaces the YAML below, its weights are the starting point",
                                elem_id="init-from")
        run_name = gr.Textbox("", label="Run name", placeholder="default: <task>-<date>-<time>",
                              info="the folder under the runs folder; letters, digits, . _ -",
                              elem_id="run-name")
    with gr.Row():
        dataset = gr.File(label="Dataset: a data file, or a .zip of a captions folder or of a data "
                                "file with its media", file_types=[".zip", *DATA_SUFFIXES],
                          height=120, elem_id="dataset-file")
        data_path = gr.Textbox(label="…or a dataset path on the server",
                               info="a file, a folder or bundled:<dataset>/<file>; used when nothing is "
                                    "uploaded; empty: data.train of the YAML",
                               placeholder="/data/my-captions or bundled:shapes/captions_train.jsonl")
        with gr.Column(scale=0, min_width=160):
            preview = gr.Button("Preview dataset", size="sm", elem_id="preview-dataset")
    preview_out = gr.Markdown(elem_id="dataset-preview")
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
        stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop-finetune")
    status = gr.HTML(render_status(None), elem_id="finetune-status")
    plot = gr.Plot(None, label="Loss and metrics", show_label=False, elem_id="loss-plot")
    with gr.Accordion("Log", open=False, elem_id="job-log-box"):
        log_box = gr.Textbox(show_label=False, lines=8, max_lines=8, autoscroll=True, interactive=False,
                             elem_id="job-log")
    report = gr.Markdown(elem_id="eval-report")
    use_model = gr.Button("Use this model in Chat", visible=False, elem_id="use-model")
    with gr.Accordion("Runs", open=False, elem_id="run-history-box"):
        history = gr.Dataframe(headers=runs.HISTORY_HEADERS, value=runs.run_history(shared.runs_dir) or None,
                               interactive=False, wrap=True, elem_id="run-history")
    timer = gr.Timer(1.0, active=False)
    field_inputs = list(inputs.values())

    def pick_model(choice: str) -> list:
        """A model to start from: its config goes into the YAML and the form; none: the YAML stays."""
        if not choice:
            return [gr.skip() for _ in range(1 + len(fields))]
        with user_errors():
            text = runs.model_config_yaml(shared.host.model_folder(shared.store.key(choice)))
        return [text, *form_values(text, fields)]

    init_from.input(pick_model, [init_from], [config_yaml, *field_inputs],
                    api_visibility="undocumented")

    def preview_dataset(dataset: str | None, data_path: str, config_yaml: str, **form: Any) -> str:
        """The examples per split the run will see, a warning for a tiny validation split, the first ones."""
        import tempfile

        with user_errors():
            data = apply_form(config_yaml, fields, [form.get(f.param) for f in fields], dump=False)
            with tempfile.TemporaryDirectory(prefix="mmassist-preview-") as tmp:
                for split, path in prepare_dataset(dataset, data_path, Path(tmp)).items():
                    set_path(data, f"data.{split}", path)
                if not get_path(data, "data.train"):
                    raise ConfigError("no training data: upload a dataset, give a path on the server, "
                                      "or set data.train in the YAML")
                return runs.preview_markdown(FusionConfig.from_dict(data), shared.host)

    preview.click(preview_dataset, [dataset, data_path, config_yaml], [preview_out], inputs_kwargs=inputs,
                  api_name="preview_dataset", concurrency_limit=1, concurrency_id="preview")

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

    def start_finetune(dataset: str | None, data_path: str, config_yaml: str, init_model: str = "",
                       name: str = "", **form: Any) -> list:
        """Start a fine-tune from the YAML, the form's values over it, and the dataset given; from the
        weights of ``init_model`` when one is picked, into the run folder ``name`` when one is given."""
        with user_errors():
            shared.runner.check_free()
            values = [form.get(f.param, None) for f in fields]
            data = apply_form(config_yaml, fields, values, dump=False)
            init = shared.store.key(init_model) if init_model else None
            out = runs.run_folder(shared.runs_dir, name, get_path(data, "task.kind") or "run")
            try:
                found = prepare_dataset(dataset, data_path, out / "data")
                for split, path in found.items():
                    set_path(data, f"data.{split}", path)
                if not get_path(data, "data.train"):
                    raise ConfigError("no training data: upload a dataset, give a path on the server, "
                                      "or set data.train in the YAML")
                job = shared.runner.start(FusionConfig.from_dict(data), out, init_from=init)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)  # no empty run folders for Chat to list
                raise
        return [render_status(job.snapshot()), None, "", gr.Timer(active=True),
                gr.Button(visible=False), gr.Button(interactive=True), ""]

    start.click(start_finetune, [dataset, data_path, config_yaml, init_from, run_name],
                [status, plot, report, timer, use_model, stop, log_box],
                inputs_kwargs=inputs, api_name="start_finetune", concurrency_limit=1,
                concurrency_id="finetune")

    def stop_finetune() -> list:
        """Ask the running fine-tune to stop after its current step."""
        stopped = shared.runner.stop()
        job = shared.runner.job
        if not stopped:
            gr.Info("no fine-tune is running")
        return [render_status(job.snapshot() if job else None), gr.Button(interactive=False)]

    stop.click(stop_finetune, None, [status, stop], api_name="stop_finetune", concurrency_limit=None)

    def poll() -> list:
        job = shared.runner.job
        snap = job.snapshot() if job else None
        if snap is None:
            return [render_status(None), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(),
                    gr.skip(), gr.Button(interactive=False), gr.skip(), gr.skip(), gr.skip()]
        final = not snap.running
        return [
            render_status(snap),
            loss_plot(snap.points, snap.series, snap.max_steps),
            runs.report_markdown(report_of(snap)) if final else gr.skip(),
            gr.Timer(active=not final),
            gr.Button(visible=final and snap.phase != "failed"),
            gr.Dropdown(choices=shared.store.choices()) if final else gr.skip(),
            gr.Button(interactive=not final and not snap.stop_requested),
            "\n".join(snap.log),
            runs.run_history(shared.runs_dir) if final else gr.skip(),
            gr.Dropdown(choices=model_choices(shared)) if final else gr.skip(),
        ]

    poll_outputs = [status, plot, report, timer, use_model, shared.model_box, stop, log_box, history, init_from]
    timer.tick(poll, None, poll_outputs, api_visibility="undocumented", concurrency_limit=None,
               show_progress="hidden")
    demo.load(poll, None, poll_outputs, api_visibility="undocumented", concurrency_limit=None)

    def job_status() -> dict:
        """The fine-tune's progress: phase, step, max_steps, loss, points, metrics, output_dir, error."""
        job = shared.runner.job
        if job is None:
            return {"phase": "idle"}
        return dataclasses.asdict(job.snapshot())

    gr.api(job_status, api_name="job_status", concurrency_limit=None)

    def use_in_chat() -> list:
        job = shared.runner.job
        if job is None:
            return [gr.skip(), gr.skip()]
        path = str(job.output_dir.resolve())
        return [gr.Dropdown(choices=shared.store.choices(), value=path), gr.Tabs(selected="chat")]

    use_model.click(use_in_chat, None, [shared.model_box, shared.tabs], api_visibility="undocumented")


# -- helpers (no gradio state) ------------------------------------------------------------------


def model_choices(shared: Shared) -> list[tuple[str, str]]:
    """The models a run may start from: none (a new model), the starter, the models fine-tuned here."""
    return [("a new model (the config below)", ""), *shared.store.choices()]


def form_input(gr, f: FormField, value: Any):
    """The gradio input for one config field, labelled in words, helped by its help text and its config path."""
    common = {"label": f.label, "info": f"{f.help} ({f.path})", "value": f.to_form(value),
              "elem_id": "field-" + f.param}
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), **common)
    if f.kind == "bool":
        return gr.Checkbox(**common)
    if f.kind in ("int", "float"):
        return gr.Number(precision=0 if f.kind == "int" else None, **common)
    if f.kind == "list":
        return gr.Textbox(placeholder="comma-separated", **{**common, "info": f"{f.help}, comma-separated ({f.path})"})
    return gr.Textbox(**common)


def parse_yaml(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml_load(text or "") or {}
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


def loss_plot(points: list[dict[str, Any]], series: Sequence[str] = (), max_steps: int = 0):
    """The plot of a run: a Vega-Lite chart for ``gr.Plot``, or None until there is a point.

    Each point is drawn as a dot on its line, so a line of one point (the first validation) shows;
    the step axis runs from 0 to the run's last step with whole-number ticks; every line the run will
    draw is in the legend from the start, in a fixed colour. Rendered as SVG, so the page's text and
    marks can be read (the browser tests do).
    """
    import json

    from gradio.components.plot import AltairPlotData

    if not points:
        return None
    names = list(dict.fromkeys([*series, *(p["series"] for p in points)]))
    last = max([max_steps, *(p["step"] for p in points)])
    values = [{"step": int(p["step"]), "value": float(p["value"]), "series": p["series"]}
              for p in points if p["value"] == p["value"]]  # NaN (a failed metric) is left out
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Loss and metrics",
        "height": 280,
        "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}},
        "data": {"values": values},
        "layer": [{
            "mark": {"type": "line", "point": {"filled": True, "size": 20, "strokeWidth": 0}, "tooltip": True},
            "encoding": {
                "x": {"field": "step", "type": "quantitative", "title": "step",
                      "scale": {"domain": [0, max(last, 1)], "nice": False},
                      "axis": {"tickMinStep": 1, "format": "d"}},
                "y": {"field": "value", "type": "quantitative", "title": "value"},
                # gradio replaces the range with its palette, colour i for the i-th name
                "color": {"field": "series", "type": "nominal", "title": None,
                          "scale": {"domain": names, "range": list(range(len(names)))}},
            },
        }],
    }
    return AltairPlotData(chart="line", plot=json.dumps(spec))


def render_status(snap: Snapshot | None) -> str:
    """The progress bar and one line of numbers, as HTML."""
    if snap is None:
        return "<p id='job-phase' data-phase='idle'>No fine-tune yet. Choose a task and a dataset, then Start.</p>"
    done = snap.step / snap.max_steps if snap.max_steps else 0.0
    training = snap.phase == "training"
    # The time left is an estimate of the training steps only: it is not shown while evaluating or saving.
    eta = (snap.elapsed / done - snap.elapsed) if 0 < done < 1 and training and not snap.stop_requested else None
    loss = f"{snap.loss:.4f}" if snap.loss is not None else "–"
    batches = f" ({snap.phase_done} / {snap.phase_total} batches)" if snap.phase_total else ""
    phase = {"preparing": "preparing data and model", "training": "training",
             "validating": f"validating{batches}", "testing": f"testing{batches}", "saving": "saving the model",
             "done": "done", "stopped": "stopped", "failed": "failed"}[snap.phase]
    if snap.stop_requested and snap.running:
        phase = "stopping: " + ("finishing this step" if training else phase)
    parts = [f"step {snap.step} / {snap.max_steps or '?'}", f"loss {loss}", f"{snap.elapsed:.0f} s"]
    if eta is not None:
        parts.append(f"about {eta:.0f} s left")
    out = (f"<div id='job-phase' data-phase='{snap.phase}' data-step='{snap.step}'>"
           f"<progress max='{max(snap.max_steps, 1)}' value='{snap.step}' style='width:100%'></progress>"
           f"<p><b>{html.escape(snap.run_name)}</b>: {phase} · {' · '.join(parts)}</p>")
    if snap.error:
        out += f"<p style='color:#c00'>{html.escape(snap.error)}</p>"
    elif not snap.running:
        kept = ""
        if snap.best_step is not None:
            kept = (f" It holds the weights of step {snap.best_step}, the best validation {snap.metric}"
                    + (f" (training went on to step {snap.step})." if snap.best_step != snap.step else "."))
        out += (f"<p id='job-kept' data-best-step='{snap.best_step if snap.best_step is not None else ''}'>Model "
                f"saved in <code>{html.escape(snap.output_dir)}</code>.{kept} Pick it in the Model box or press "
                "“Use this model in Chat”.</p>")
    return out + "</div>"


def report_of(snap: Snapshot) -> dict[str, Any] | None:
    if snap.error:
        return {"error": snap.error}
    return snap.metrics
