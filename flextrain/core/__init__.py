"""FlexTrain's algorithm core: depth-flexible models, distillation, merges, simulation.

FlexTrain (Unsal et al., "FlexTrain: A Dynamic Training Framework for Heterogeneous
Devices Environments", NeurIPS 2023 WANT workshop, arXiv 2310.20457) trains one
residual network so that every prefix of it (stem + first k blocks + shared head) is a
usable model.

This package's ``__init__`` deliberately imports nothing: ``flextrain.core.arch`` and
``flextrain.core.policy`` are pure Python and are used by the Kubernetes operator, which
must never import torch. Import the submodules you need directly.
"""
