"""Recipes built on the library: the bundled datasets (:mod:`.bundled`) and the starter model
(:mod:`.starter`). They use the library as any user would (``finetune``, the host's encoders by
registered name) and the library never imports them.

Layer: above training; below the apps (the CLI and the web app).
"""
