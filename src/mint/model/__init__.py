"""Everything that touches torch, transformers or peft: data rendering and tokenization, model
loading and LoRA, projection, the feature store, gradient features (the maths in `gradients`,
the step in `features`), warm-up, training (its saved state in `checkpoint`) and
evaluation.

Modules import torch and transformers inside their functions where they can, so importing one
(e.g. `mint.model.store` to read features) stays cheap. Nothing here imports `mint.pipeline`.
"""
