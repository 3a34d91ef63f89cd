"""The plugin contract: what a modality plugin implements and what the host gives it.

The hooks are in :mod:`mmassist.core.contract.hookspecs` (start there: it is the whole contract on
one page); the types they exchange are :class:`~mmassist.core.contract.encoders.EncoderSpec`,
:class:`~mmassist.core.contract.encoders.Encoder` and :class:`~mmassist.core.contract.media.Media`;
:func:`~mmassist.core.contract.testing.check_encoder` is the contract test a plugin runs on itself.
The :class:`~mmassist.core.contract.host.Host` loads plugins and holds what they register.

Layer: the lowest of the library, above :mod:`mmassist.core.errors` and :mod:`mmassist.core.schema`.
"""
