"""The runtime: the whole config, the fused model, the processor, generation, the assistant and
checkpoints. Everything needed to load a model and talk to it, and nothing of training.

Layer: above the plugin contract and :mod:`mmassist.fusion`; below data, training and the apps.
"""
