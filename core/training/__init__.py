"""Training: the fine-tuning loop, optimisation, distributed wrapping, evaluation, metrics, callbacks
and the resumable training state.

Layer: above the runtime and the data readers; below the recipes and the apps.
"""
