"""The neural-network core both assays share.

:mod:`.network` (one factory for resnet18/34/50 and resnext50_32x4d with any input
planes, outputs and head), :mod:`.record` (one checksummed weights record),
:mod:`.train` (one training loop: AdamW + cosine, AMP, BatchNorm-safe batches, early
stopping), :mod:`.calibration` (temperature scaling), :mod:`.metrics` (binary and
multi-class metrics), :mod:`.splits` (patient-level splits) and :mod:`.saliency`
(Grad-CAM). Nothing here knows an assay; import the submodules (this package imports
nothing, so importing it does not import torch).
"""
