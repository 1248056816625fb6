"""The frozen models of prior extraction: settings (presets), loaders and their batch calls.

``load_mllm``, ``load_reference`` and ``load_clip`` take the settings of one preset component and
return an object holding the loaded model; ``ensure_tiny`` builds the offline test models.
"""
