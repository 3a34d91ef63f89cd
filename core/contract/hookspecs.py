"""The mmassist plugin contract, on one page: every hook a plugin can implement.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose names match the specs
below; an implementation may declare only the arguments it uses (pluggy passes them by name). The
built-in plugins (:mod:`mmassist.plugins.text`, :mod:`mmassist.plugins.image`,
:mod:`mmassist.plugins.video`, and the recipes' :mod:`mmassist.core.recipes.bundled.hooks` and
:mod:`mmassist.core.recipes.starter.hooks`) use exactly these hooks. A third-party plugin is a separate
distribution, ``mmassist-<thing>``, that declares an entry point in the group ``mmassist``::

    [project.entry-points.mmassist]
    audio = "mmassist_audio"

    # mmassist_audio/__init__.py
    from mmassist.core.contract.hookspecs import hookimpl      # also: from mmassist import core; core.hookimpl
    from mmassist.core.contract.encoders import EncoderSpec

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="audio/logmel", modality="audio", mime_types=("audio/wav",),
                             config_cls=LogMelAudioConfig, build=LogMelAudioEncoder))

The types a plugin deals in:

- :class:`~mmassist.core.contract.encoders.EncoderSpec`: what ``register_encoders`` registers: a name
  ``<modality>/<backend>``, the MIME types it accepts, its config dataclass, a lazy ``build``, and for
  the contract test ``tiny_config`` and ``example_inputs``; ``initial_weights`` names the config keys
  that only point at first weights.
- :class:`~mmassist.core.contract.encoders.Encoder`: what ``build`` returns: ``preprocess`` (inputs ->
  CPU tensors) and ``forward`` (-> :class:`~mmassist.core.contract.encoders.EncoderOutput`, features
  ``(B, T, D)`` with ``D == output_dim``).
- :class:`~mmassist.core.contract.media.Media`: one raw input (a path, bytes, a PIL image or text) with
  its sniffed MIME type, handed to ``preprocess`` and ``route_input``.
- :class:`~mmassist.core.contract.sources.ModelSource` and :class:`~mmassist.core.contract.sources.DataSource`:
  named models and data URI schemes.
- :func:`~mmassist.core.contract.testing.check_encoder`: the contract test; run it on your encoder in
  your own test suite (our suite runs it over every encoder it finds).

The hooks, by phase:

1. **Start-up** (each called once per plugin when a :class:`~mmassist.core.contract.host.Host` is created,
   every implementation runs, return values are ignored): :func:`register_encoders`,
   :func:`register_models`, :func:`register_data_sources`. Nothing heavy should happen here. A plugin
   that fails to import, names a hook that does not exist, or raises while registering is recorded in
   ``Host.failed_plugins`` with everything it registered taken back; the host carries on.
2. **Per input** (called for each raw input, the first non-None result wins): :func:`route_input`.

Environment switches read at start-up: ``MMASSIST_NO_PLUGINS=1`` loads no third-party plugin;
``MMASSIST_LOAD_PLUGINS=a,b`` only those named (entry-point or distribution name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from mmassist.core.contract.encoders import EncoderSpec
    from mmassist.core.contract.media import Media
    from mmassist.core.contract.sources import DataSource, ModelSource

hookspec = pluggy.HookspecMarker("mmassist")
hookimpl = pluggy.HookimplMarker("mmassist")


# -- start-up: what exists ----------------------------------------------------------------------


@hookspec
def register_encoders(register: Callable[["EncoderSpec"], None]) -> None:
    """Register the modality encoders this plugin provides.

    Called once per plugin when a :class:`mmassist.core.Host` starts. Nothing heavy should happen here:
    import torch-side libraries (timm, decord, transformers...) inside the spec's ``build``.

    :param register: call ``register(EncoderSpec(...))`` once per encoder. Names are global and
        exact; registering a name another plugin already holds is an error that names both
        plugins, and this plugin is then recorded in ``Host.failed_plugins``.
    :return: nothing; return values are ignored.

    .. versionadded:: 0.1
    """


@hookspec
def register_models(register: Callable[["ModelSource"], None]) -> None:
    """Register named models: checkpoint folders a user loads by name, as ``Assistant.from_pretrained("starter")``,
    and pretrained decoders a config names, as ``decoder.path: smollm2-135m-instruct``.

    Called once per plugin when a :class:`mmassist.core.Host` starts. The starter recipe registers
    ``starter`` this way, and the built-in decoders their names; a distribution that ships a model does the same.

    :param register: call ``register(ModelSource(name, path))`` once per model (``kind="decoder"`` for a
        Hugging Face causal LM); ``path()`` returns the folder now (it may prefer a copy the user installed
        over the one shipped, or convert a file once into the cache). A name another plugin holds is an
        error, as for encoders.
    :return: nothing; return values are ignored.

    .. versionadded:: 0.1
    """


@hookspec
def register_data_sources(register: Callable[["DataSource"], None]) -> None:
    """Register a data URI scheme: ``<scheme>:<rest>`` names a local data file built or fetched on use.

    Called once per plugin when a :class:`mmassist.core.Host` starts. The bundled datasets register
    ``bundled`` (``bundled:shapes/captions_train.jsonl``); the data readers resolve such a path through
    :meth:`mmassist.core.Host.resolve_data` before reading it.

    :param register: call ``register(DataSource(scheme, resolve))``; ``resolve(uri)`` returns the local
        path the whole URI names, building it first if needed, or raises an ``MMAssistError``.
    :return: nothing; return values are ignored.

    .. versionadded:: 0.1
    """


# -- per input ----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def route_input(media: "Media", candidates: list["EncoderSpec"]) -> "str | None":
    """Choose the encoder for one input.

    Called by :meth:`mmassist.core.Host.route` for each raw input (an image path, video bytes, text...).
    The first implementation that returns a name wins (``firstresult``), so a plugin can claim an
    input by its content (say, a WAV file holding speech) before the host's default, which runs
    last and picks the first candidate whose ``mime_types`` match ``media.mime_type``.

    :param media: the input with its sniffed MIME type (see :class:`mmassist.core.contract.media.Media`); read its
        bytes with ``media.read_bytes()`` when needed.
    :param candidates: the encoder specs that may be chosen (all registered ones, or those a
        model was built with), in registration order.
    :return: the ``name`` of one of ``candidates``, or None to leave the choice to other plugins.

    .. versionadded:: 0.1
    """
