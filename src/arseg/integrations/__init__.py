"""Bridges to other frameworks; each submodule imports its framework only when it is imported.

* :mod:`arseg.integrations.mmseg`: registers :class:`arseg.losses.ARLoss` in mmsegmentation's
  ``MODELS`` registry (``custom_imports=dict(imports=["arseg.integrations.mmseg"])``).
* :mod:`arseg.integrations.smp`: segmentation_models_pytorch architectures as arseg models.
"""
