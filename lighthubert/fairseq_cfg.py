"""The fairseq config of LightHuBERT checkpoints, in one place: the keys with the authors' defaults
(their ``LightHuBERTConfig``), and the rule that tells norm weights from the others.

Used by the drop-in config (:mod:`lighthubert.compat`), by random checkpoints in the released layout
(:mod:`lighthubert.checkpoint`); :meth:`lighthubert.model.ModelConfig.to_dict` writes the same
model keys (a test holds them equal).
"""

from __future__ import annotations

MODEL_DEFAULTS: dict[str, object] = {
    "extractor_mode": "layer_norm", "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False, "conv_pos": 128,
    "conv_pos_groups": 16, "pos_conv_depth": 1, "required_seq_len_multiple": 2,
    "layer_pred_num": "0,0,0,0,0,0,0,0,0,0,0,1", "teacher_embed_dim": 768,
}
"""Keys that shape the network, with the authors' defaults."""

TRAINING_DEFAULTS: dict[str, object] = {
    "prune_encoder_pos_conv": True, "label_rate": 50, "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "feature_grad_mult": 1.0, "mask_length": 10, "mask_prob": 0.65,
    "mask_selection": "static", "mask_other": 0, "no_mask_overlap": False, "mask_min_space": 1,
    "mask_channel_length": 10, "mask_channel_prob": 0.0, "mask_channel_selection": "static",
    "mask_channel_other": 0, "no_mask_channel_overlap": False, "mask_channel_min_space": 1,
}
"""Training-only keys (ignored for inference), with the authors' defaults."""

HUBERT_TRAINING_EXTRA: dict[str, object] = {"logit_temp": 0.1, "final_dim": 256}
"""Training-only keys of fairseq's HuBERT config that the authors' config class does not have."""


def is_norm(name: str) -> bool:
    """Whether a weight of the released layout (SPEC.md §1) belongs to a norm: the LayerNorms, the
    layer_norm extractor's per-block LayerNorm (``conv_layers.N.2.1``) and the default extractor's
    GroupNorm (``conv_layers.0.2``)."""
    return "norm" in name or ".2.1." in name or name.startswith("feature_extractor.conv_layers.0.2.")


def init_constant(name: str) -> float | None:
    """The value a freshly built weight starts at when it is constant (as in fairseq): 1 for norm
    scales and weight-norm gains, 0 for norm shifts and biases; None for weights drawn at random."""
    if name.endswith("weight_g"):
        return 1.0
    if is_norm(name):
        return 1.0 if name.endswith("weight") else 0.0
    if name.endswith("bias"):
        return 0.0
    return None
