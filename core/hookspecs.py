"""The hooks a mmassist plugin can implement.

A plugin is a module (or any object) with functions marked ``@core.hookimpl`` whose names match
the specs below. Built-in plugins (``plugins.text``, ``plugins.image``, ``plugins.video``) use
exactly these hooks. A third-party plugin is a separate distribution that declares an entry point
in the group ``mmassist``::

    [project.entry-points.mmassist]
    audio = "mmassist_audio"

Hook implementations may declare only the arguments they use (pluggy passes them by name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from core.encoders import EncoderSpec
    from core.media import Media

hookspec = pluggy.HookspecMarker("mmassist")
hookimpl = pluggy.HookimplMarker("mmassist")


@hookspec
def register_encoders(register: Callable[["EncoderSpec"], None]) -> None:
    """Register the modality encoders this plugin provides.

    Called once per plugin when a :class:`core.Host` starts. Nothing heavy should happen here:
    import torch-side libraries (timm, decord, transformers...) inside the spec's ``build``.

    :param register: call ``register(EncoderSpec(...))`` once per encoder. Names are global and
        exact; registering a name another plugin already holds is an error that names both
        plugins, and this plugin is then recorded in ``Host.failed_plugins``.
    :return: nothing; return values are ignored.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def route_input(media: "Media", candidates: list["EncoderSpec"]) -> "str | None":
    """Choose the encoder for one input.

    Called by :meth:`core.Host.route` for each raw input (an image path, video bytes, text...).
    The first implementation that returns a name wins (``firstresult``), so a plugin can claim an
    input by its content (say, a WAV file holding speech) before the host's default, which runs
    last and picks the first candidate whose ``mime_types`` match ``media.mime_type``.

    :param media: the input with its sniffed MIME type (see :class:`core.media.Media`); read its
        bytes with ``media.read_bytes()`` when needed.
    :param candidates: the encoder specs that may be chosen (all registered ones, or those a
        model was built with), in registration order.
    :return: the ``name`` of one of ``candidates``, or None to leave the choice to other plugins.

    .. versionadded:: 0.1
    """


