"""The plugin host: a pluggy ``PluginManager("mmassist")`` and the registries its plugins fill.

Creating a :class:`Host` loads the built-in plugins and every distribution that declares an entry
point in the group ``mmassist``, each inside its own ``try``: a plugin that fails to import,
validate or register is recorded in ``host.failed_plugins`` and the host carries on.

Environment switches (read when a Host is created):

- ``MMASSIST_NO_PLUGINS=1``: load no third-party plugins, only the built-ins.
- ``MMASSIST_LOAD_PLUGINS=a,b``: load only the third-party plugins whose entry-point name or
  distribution name is listed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Iterator, Sequence, TypeVar

import pluggy

from mmassist.core.contract import hookspecs
from mmassist.core.contract.encoders import EncoderSpec
from mmassist.core.errors import MMAssistError, PluginError, UnknownNameError, UnsupportedInputError
from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.media import Media, extensions_for, looks_like_a_file_name, mime_matches
from mmassist.core.contract.sources import DataSource, ModelSource, uri_scheme
from mmassist.core.version import __version__

ENTRYPOINT_GROUP = "mmassist"
# Built-ins register through the same hooks as third-party plugins. The host imports them by name when
# it starts, so the contract layer never imports the layers above it: the recipes register the bundled
# datasets (``bundled:`` URIs) and the starter model (the name ``starter``).
BUILTIN_PLUGINS = ("mmassist.plugins.text", "mmassist.plugins.image", "mmassist.plugins.video",
                   "mmassist.core.recipes.bundled.hooks", "mmassist.core.recipes.starter.hooks",
                   "mmassist.core.recipes.decoders")
ENV_NO_PLUGINS = "MMASSIST_NO_PLUGINS"
# The hooks a plugin may implement (the functions of hookspecs.py marked as specs).
HOOK_NAMES = tuple(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "mmassist_spec"))
ENV_LOAD_PLUGINS = "MMASSIST_LOAD_PLUGINS"

T = TypeVar("T")


@dataclass(frozen=True)
class FailedPlugin:
    """A plugin the host could not use: where it came from, at which stage it failed and why.

    ``traceback`` is the formatted exception (the plugin's own file and line are in it; ``mmassist plugins
    -v`` prints it), or ``""`` for a failure that is not an exception (a conflict, a bad return value).
    """

    name: str
    distribution: str
    version: str
    stage: str  # "import", "validate", "register" or "route"
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.distribution} {self.version}) failed at {self.stage}: {self.error}"


def _plugin_traceback(error: BaseException) -> str:
    """The exception's traceback without the host's own frames: from the first frame outside this file."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    keep = next((i for i, f in enumerate(frames) if f.filename != __file__), len(frames))
    lines = traceback.format_list(frames[keep:]) + traceback.format_exception_only(type(error), error)
    return "Traceback (most recent call last):\n" + "".join(lines)


class Registry(Generic[T]):
    """Items by exact name. Duplicates and unknown names are errors that say what exists."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, item: T, owner: str) -> None:
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {self._owners[name]!r} and {owner!r}; "
                f"uninstall one of them or disable it with {ENV_LOAD_PLUGINS}"
            )
        self._items[name] = item
        self._owners[name] = owner

    def remove(self, name: str) -> None:
        self._items.pop(name, None)
        self._owners.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            available = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


class _DefaultRouter:
    """Runs last: routes an input to the first candidate that declares its file type (extension or
    magic bytes, :meth:`EncoderSpec.declares`), else to the first that accepts its MIME type."""

    @hookimpl(trylast=True)
    def route_input(self, media: Media, candidates: list[EncoderSpec]) -> str | None:
        for spec in candidates:
            if spec.declares(media):
                return spec.name
        for spec in candidates:
            if mime_matches(media.mime_type, spec.mime_types):
                return spec.name
        return None


class Host:
    """Loads plugins and holds what they register.

    :param load_entrypoints: load third-party plugins from the ``mmassist`` entry-point group;
        default: yes, unless ``MMASSIST_NO_PLUGINS=1``.
    :param plugins: extra plugin objects (modules or instances with hook implementations) to
        register after the others, as if they had been found through entry points.
    """

    def __init__(self, *, load_entrypoints: bool | None = None, plugins: Sequence[Any] = ()):
        self.pm = pluggy.PluginManager(ENTRYPOINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.failed_plugins: list[FailedPlugin] = []
        # Mistakes that do not stop a plugin from loading but probably are not meant (``mmassist plugins``).
        self.warnings: list[str] = []
        self.encoders: Registry[EncoderSpec] = Registry("encoder")
        self.models: Registry[ModelSource] = Registry("model")
        self.data_sources: Registry[DataSource] = Registry("data scheme")
        self._origin: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self._bad_routers: set[str] = set()  # plugins whose route_input failed: asked no more

        self.pm.register(_DefaultRouter(), name="mmassist-default-router")
        own = _own_version()
        for module_name in BUILTIN_PLUGINS:
            self._add(module_name, ("mmassist", own), lambda m=module_name: importlib.import_module(m))
        if load_entrypoints is None:
            load_entrypoints = os.environ.get(ENV_NO_PLUGINS, "").strip() not in ("1", "true", "yes")
        if load_entrypoints:
            self._load_entrypoints()
        for obj in plugins:
            name = getattr(obj, "__name__", None) or type(obj).__name__
            self._add(name, ("(passed to Host)", ""), lambda o=obj: o)
        self._register_all()

    # -- loading -----------------------------------------------------------------------------

    def _load_entrypoints(self) -> None:
        only = {s.strip() for s in os.environ.get(ENV_LOAD_PLUGINS, "").split(",") if s.strip()}
        # Sorted by distribution and entry-point name, so that which of two plugins claiming one name wins
        # does not depend on the order of the import path: the first registration is kept.
        eps = sorted(importlib.metadata.entry_points(group=ENTRYPOINT_GROUP),
                     key=lambda ep: ((ep.dist.name if ep.dist else "").lower(), ep.name))
        for ep in eps:
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if only and ep.name not in only and dist not in only:
                continue
            self._add(ep.name, (dist, version), ep.load)

    def _add(self, name: str, origin: tuple[str, str], load: Any) -> None:
        """Import (``load()``) and register one plugin; record any failure instead of raising."""
        if self.pm.has_plugin(name) or name in self._origin:
            self._fail(name, origin, "register", f"a plugin named {name!r} is already loaded")
            return
        try:
            obj = load()
        except Exception as e:  # a plugin's import error must never take the host down
            self._fail(name, origin, "import", f"{type(e).__name__}: {e}", e)
            return
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()  # a misspelled hook name is caught here, not silently ignored
        except Exception as e:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._fail(name, origin, "validate", f"{type(e).__name__}: {e}", e)
            return
        self._origin[name] = origin
        if not self.pm.get_hookcallers(obj):
            self._warn_unhooked(name, origin, obj)

    def _warn_unhooked(self, name: str, origin: tuple[str, str], obj: Any) -> None:
        """A plugin that implements no hook: most likely its functions lack ``@hookimpl``."""
        unmarked = [h for h in HOOK_NAMES if callable(getattr(obj, h, None))]
        hint = (f"it defines {', '.join(unmarked)} without @hookimpl (from mmassist.core import hookimpl)"
                if unmarked else "it defines none of the hooks " + ", ".join(HOOK_NAMES))
        self.warnings.append(f"plugin {name} ({origin[0]} {origin[1]}) registers nothing: {hint}")

    def _register_all(self) -> None:
        for hook, registry, kind, key in (("register_encoders", self.encoders, EncoderSpec, "name"),
                                          ("register_models", self.models, ModelSource, "name"),
                                          ("register_data_sources", self.data_sources, DataSource, "scheme")):
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if self.pm.has_plugin(impl.plugin_name):  # not unregistered by an earlier hook's failure
                    self._register(impl, registry, kind, key)

    def _register(self, impl: Any, registry: Registry, kind: type, key: str) -> None:
        """Run one plugin's ``register_*`` hook into ``registry``; on any error undo it all and record it."""
        name = impl.plugin_name
        dist, version = self._origin[name]
        items: list[Any] = []

        def register(item: Any) -> None:
            if not isinstance(item, kind):
                raise PluginError(f"register() takes a {kind.__name__}, got {type(item).__name__}")
            items.append(item)

        try:
            impl.function(register=register)
            for item in items:
                item = replace(item, plugin=name, distribution=dist, version=version)
                registry.add(getattr(item, key), item, owner=f"{name} ({dist})")
        except Exception as e:
            self._unregister(name)
            self._fail(name, (dist, version), "register", f"{type(e).__name__}: {e}", e)

    def _unregister(self, name: str) -> None:
        """Take a failed plugin out, with everything it registered through any hook."""
        self.pm.unregister(name=name)
        for registry in (self.encoders, self.models, self.data_sources):
            for item_name in [n for n in registry.names() if registry.get(n).plugin == name]:
                registry.remove(item_name)

    def _fail(self, name: str, origin: tuple[str, str], stage: str, error: str,
              exception: BaseException | None = None) -> None:
        trace = _plugin_traceback(exception) if exception is not None else ""
        self.failed_plugins.append(FailedPlugin(name, origin[0], origin[1], stage, error, trace))

    # -- use ---------------------------------------------------------------------------------

    def route(self, item: Any, candidates: Sequence[str] | None = None) -> tuple[EncoderSpec, Media]:
        """The encoder spec that takes ``item`` (a path, bytes, PIL image or text) and the wrapped input.

        :param candidates: encoder names to choose from (default: every registered encoder).
        :raises UnsupportedInputError: when no candidate accepts the input, listing what is accepted.
        """
        specs = [self.encoders.get(n) for n in candidates] if candidates is not None else list(self.encoders)
        if isinstance(item, str) and looks_like_a_file_name(item) and not Path(item).exists() and \
                os.path.splitext(item.strip())[1].lower() in self.file_extensions():
            raise UnsupportedInputError(f"no such file: {item!r}; check the path")  # not text: a media file name
        media = Media.of(item)
        name = self._route_name(media, specs)
        if name is None and candidates is not None:
            other = self._route_name(media, list(self.encoders))
            if other is not None:  # a loaded plugin reads it, but not one of these (the model's) encoders
                takes = ", ".join(dict.fromkeys(s.modality for s in specs)) or "no media"
                raise UnsupportedInputError(
                    f"{media.name} is {self.encoders.get(other).modality} input ({media.mime_type}), which this "
                    f"model does not take: it was built for {takes}")
        if name is None:
            accepted = "; ".join(f"{s.name}: {', '.join(s.mime_types)}" for s in specs) or "nothing"
            if media.value is item and looks_like_a_file_name(item):  # a path that is not there
                raise UnsupportedInputError(
                    f"there is no file {item!r}; check the path. (Read as text, it is refused too: "
                    f"accepted here: {accepted})"
                )
            raise UnsupportedInputError(
                f"no loaded plugin accepts {media.name} (detected type {media.mime_type}); "
                f"accepted here: {accepted}. Install a plugin for this type (pip install mmassist-<thing>)"
            )
        return self.encoders.get(name), media

    def _route_name(self, media: Media, specs: list[EncoderSpec]) -> str | None:
        """Ask each plugin's ``route_input`` in pluggy's order (first answer wins). A plugin whose
        ``route_input`` raises or names an encoder that is not a candidate is recorded as failed (stage
        ``route``) and asked no more; routing goes on with the others."""
        names = {s.name for s in specs}
        for impl in reversed(self.pm.hook.route_input.get_hookimpls()):
            plugin = impl.plugin_name
            if plugin in self._bad_routers:
                continue
            args = {"media": media, "candidates": list(specs)}
            try:
                name = impl.function(**{a: args[a] for a in impl.argnames})
            except MMAssistError:
                raise  # a plugin saying the input is bad (empty, undecodable) is an answer, not a failure
            except Exception as e:
                self._bad_router(plugin, f"route_input raised on {media.name}: {type(e).__name__}: {e}", e)
                continue
            if name is None:
                continue
            if name not in names:
                self._bad_router(plugin, f"route_input returned {name!r} for {media.name}, which is not one of "
                                         f"the candidates ({', '.join(sorted(names)) or 'none'})")
                continue
            return name
        return None

    def _bad_router(self, plugin: str, error: str, exception: BaseException | None = None) -> None:
        self._bad_routers.add(plugin)
        self._fail(plugin, self._origin.get(plugin, ("?", "?")), "route", error, exception)

    def model_folder(self, name_or_path: str | Path) -> Path:
        """The folder of a model given by path, or by a name a plugin registered (``"starter"``, or a
        decoder's name such as ``"smollm2-135m-instruct"``).

        A folder that exists wins over a registered name, so ``./starter/`` is still loadable by path.
        """
        source = self.model_source(name_or_path)
        return Path(source.path()) if source is not None else Path(name_or_path)

    def model_source(self, name_or_path: str | Path) -> ModelSource | None:
        """The registered model ``name_or_path`` names, or None for a path (an existing path wins)."""
        if isinstance(name_or_path, str) and name_or_path in self.models and not Path(name_or_path).exists():
            return self.models.get(name_or_path)
        return None

    def resolve_data(self, path: str | Path) -> Path:
        """A local path for ``path``: a registered ``<scheme>:...`` URI is resolved (built on first use
        by the plugin that registered the scheme); anything else is a path as it is."""
        scheme = uri_scheme(path)
        if scheme is None or scheme not in self.data_sources:
            return Path(path)
        return Path(self.data_sources.get(scheme).resolve(str(path)))

    def media_modalities(self) -> list[str]:
        """Every modality of a loaded encoder that reads files (all but ``text``), in registration order."""
        return list(dict.fromkeys(s.modality for s in self.encoders if s.modality != "text"))

    def file_extensions(self, modality: str | None = None) -> list[str]:
        """The file endings the loaded encoders (optionally of one modality) take: declared ones and
        those the MIME table maps to their MIME types."""
        out: list[str] = []
        for spec in self.encoders:
            if modality is None or spec.modality == modality:
                out.extend(e for e in [*spec.extensions, *extensions_for(spec.mime_types)] if e not in out)
        return out

    def accepted_mime_types(self, modality: str | None = None) -> list[str]:
        """Every MIME type (pattern) some loaded encoder accepts, optionally for one modality."""
        out: list[str] = []
        for spec in self.encoders:
            if modality is None or spec.modality == modality:
                out.extend(m for m in spec.mime_types if m not in out)
        return out

    def describe(self) -> list[dict[str, str]]:
        """One row per encoder, for ``mmassist plugins`` and the UI's Plugins tab."""
        return [
            {
                "name": s.name,
                "modality": s.modality,
                "mime_types": ", ".join(s.mime_types),
                "extensions": ", ".join(s.extensions),
                "config": f"{s.config_cls.__module__}.{s.config_cls.__qualname__}",
                "distribution": s.distribution,
                "version": s.version,
                "plugin": s.plugin,
                "description": s.description,
            }
            for s in self.encoders
        ]


def _own_version() -> str:
    try:
        return importlib.metadata.version("mmassist")
    except importlib.metadata.PackageNotFoundError:
        return __version__
