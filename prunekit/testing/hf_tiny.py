"""Tiny HF models of many families, built offline from configs with random weights, for coverage tests.

``BUILDERS[name](seed=0)`` returns ``(model, example_inputs)``: an eval-mode CPU model with eager
attention whose norm parameters are randomised (default norms are all equal, which would hide a norm
given to the wrong head), and a dict of inputs for ``model(**inputs)``. The reference a prune is
compared with, and the norm randomisation, are reference.py's (they serve plain-torch models too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .reference import randomise_norms

VOCAB = 64


def _tokens(seed: int, seq2seq: bool = False, length: int = 7) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(1, VOCAB, (2, length), generator=g)}
    if seq2seq:
        x["decoder_input_ids"] = torch.randint(1, VOCAB, (2, 5), generator=g)
    return x


def _pixels(seed: int, size: int = 32) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, size, size, generator=g)}


def _build(config: str, auto: str, seed: int, **fields: object) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config)(**fields)
    cfg._attn_implementation = "eager"  # every family; sdpa hides nothing but differs by ~1e-7
    cls = getattr(transformers, auto)
    if auto.startswith("Auto"):
        model = cls.from_config(cfg, attn_implementation="eager")
    else:  # some Auto classes fail on configs built in code (transformers 5: architectures None)
        model = cls(cfg)
    return randomise_norms(model.eval(), seed)


def _lm(config: str, seed: int, **fields: object) -> tuple[nn.Module, dict]:
    fields = {"bos_token_id": 1, "eos_token_id": 2, **fields}  # ids inside the tiny vocabulary
    return _build(config, "AutoModelForCausalLM", seed, vocab_size=VOCAB, **fields), _tokens(seed)


_DECODER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)


def llama(seed: int = 0):
    return _lm("LlamaConfig", seed, **_DECODER, num_key_value_heads=2, head_dim=8)


def mistral(seed: int = 0):
    return _lm("MistralConfig", seed, **_DECODER, num_key_value_heads=2, head_dim=8)


def qwen2(seed: int = 0):
    return _lm("Qwen2Config", seed, **_DECODER, num_key_value_heads=2)


def stablelm(seed: int = 0):
    return _lm("StableLmConfig", seed, **_DECODER, num_key_value_heads=4)


def stablelm_qknorm(seed: int = 0):
    return _lm("StableLmConfig", seed, **_DECODER, num_key_value_heads=2, qk_layernorm=True)


def olmo2(seed: int = 0):
    return _lm("Olmo2Config", seed, **_DECODER, num_key_value_heads=4)


def cohere_qknorm(seed: int = 0):
    return _lm("CohereConfig", seed, **_DECODER, num_key_value_heads=2, use_qk_norm=True)


def phi(seed: int = 0):
    return _lm("PhiConfig", seed, **_DECODER, partial_rotary_factor=0.5)


def phi3(seed: int = 0):
    return _lm("Phi3Config", seed, **_DECODER, num_key_value_heads=2, pad_token_id=0)


def gpt2(seed: int = 0):
    return _lm("GPT2Config", seed, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=32)


def gpt_neox(seed: int = 0):
    return _lm("GPTNeoXConfig", seed, **_DECODER, rotary_pct=0.5)


def falcon(seed: int = 0):  # multi-query attention, parallel attention + MLP
    return _lm(
        "FalconConfig", seed, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True
    )


def falcon_gqa(seed: int = 0):  # the "new decoder architecture": grouped kv heads, fused, interleaved
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2)
    return _lm("FalconConfig", seed, **fields, new_decoder_architecture=True)


def opt(seed: int = 0):
    fields = dict(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4)
    return _lm("OPTConfig", seed, **fields, word_embed_proj_dim=32, max_position_embeddings=32)


def bart(seed: int = 0):
    fields = dict(d_model=32, encoder_layers=2, decoder_layers=2, max_position_embeddings=32)
    fields.update(
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48
    )
    model = _build("BartConfig", "AutoModelForSeq2SeqLM", seed, vocab_size=VOCAB, **fields)
    return model, _tokens(seed, seq2seq=True)


def _t5(seed: int, ff: str):
    fields = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4)
    fields.update(relative_attention_num_buckets=8, feed_forward_proj=ff, decoder_start_token_id=0)
    model = _build("T5Config", "AutoModelForSeq2SeqLM", seed, vocab_size=VOCAB, **fields)
    return model, _tokens(seed, seq2seq=True)


def t5(seed: int = 0):
    return _t5(seed, "relu")


def t5_gated(seed: int = 0):
    return _t5(seed, "gated-gelu")


_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def bert(seed: int = 0):
    fields = dict(vocab_size=VOCAB, max_position_embeddings=32, **_ENCODER)
    return _build("BertConfig", "AutoModelForSequenceClassification", seed, **fields), _tokens(seed)


def roberta(seed: int = 0):
    fields = dict(vocab_size=VOCAB, max_position_embeddings=40, pad_token_id=1, **_ENCODER)
    return _build("RobertaConfig", "AutoModelForSequenceClassification", seed, **fields), _tokens(seed)


def distilbert(seed: int = 0):
    fields = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=32)
    return _build("DistilBertConfig", "AutoModelForSequenceClassification", seed, **fields), _tokens(seed)


def vit(seed: int = 0):
    fields = dict(image_size=32, patch_size=8, num_labels=3, **_ENCODER)
    return _build("ViTConfig", "AutoModelForImageClassification", seed, **fields), _pixels(seed)


def swin(seed: int = 0):
    fields = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)
    return _build("SwinConfig", "AutoModelForImageClassification", seed, num_labels=3, **fields), _pixels(
        seed
    )


def beit(seed: int = 0, shared: bool = False, config: str = "BeitConfig", per_layer: bool = True):
    # shared: one bias table on the encoder, added in every layer; per_layer: one table in each layer
    fields = dict(image_size=32, patch_size=8, use_relative_position_bias=per_layer, num_labels=3, **_ENCODER)
    fields["use_shared_relative_position_bias"] = shared
    return _build(config, "AutoModelForImageClassification", seed, **fields), _pixels(seed)


def beit_shared(seed: int = 0):
    return beit(seed, shared=True, per_layer=False)


def deberta_v2(seed: int = 0, share_att_key: bool = True):  # DeBERTa-v3's settings, 8 position buckets
    fields = dict(vocab_size=VOCAB, max_position_embeddings=32, relative_attention=True, position_buckets=8)
    fields.update(pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", position_biased_input=False)
    model = _build("DebertaV2Config", "DebertaV2ForSequenceClassification", seed, share_att_key=share_att_key,
                   **fields, **_ENCODER)  # fmt: skip
    return model, _tokens(seed)


def deberta_v2_pos(seed: int = 0):  # share_att_key false: own pos_key_proj / pos_query_proj per layer
    return deberta_v2(seed, share_att_key=False)


def mpnet(seed: int = 0):  # the encoder's bias table: its forward always uses 32 buckets
    fields = dict(vocab_size=VOCAB, max_position_embeddings=40, relative_attention_num_buckets=32, **_ENCODER)
    return _build("MPNetConfig", "MPNetForSequenceClassification", seed, **fields), _tokens(seed)


def codegen(seed: int = 0):  # qkv_proj in mp_num = 4 shards: 16 heads of 4 make 4 units (one per slot)
    fields = dict(n_embd=64, n_layer=2, n_head=16, n_inner=48, rotary_dim=2, n_positions=32)
    return _lm("CodeGenConfig", seed, **fields)


# look-alikes of the families above, for the coverage matrix
def gemma(seed: int = 0):
    return _lm("GemmaConfig", seed, **_DECODER, num_key_value_heads=2, head_dim=8)


def gemma2(seed: int = 0):
    return _lm("Gemma2Config", seed, **_DECODER, num_key_value_heads=2, head_dim=8)


def granite(seed: int = 0):
    return _lm("GraniteConfig", seed, **_DECODER, num_key_value_heads=2)


def qwen3(seed: int = 0):  # one q/k norm of head_dim shared by every head
    return _lm("Qwen3Config", seed, **_DECODER, num_key_value_heads=2, head_dim=8)


def olmo(seed: int = 0):
    return _lm("OlmoConfig", seed, **_DECODER, num_key_value_heads=4)


def starcoder2(seed: int = 0):
    return _lm("Starcoder2Config", seed, **_DECODER, num_key_value_heads=2)


def gptj(seed: int = 0):
    return _lm("GPTJConfig", seed, n_embd=32, n_layer=2, n_head=4, n_inner=48, rotary_dim=4, n_positions=32)


def gpt_bigcode(seed: int = 0):  # multi-query, fused c_attn (Linear)
    return _lm("GPTBigCodeConfig", seed, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=32)


def biogpt(seed: int = 0):
    return _lm("BioGptConfig", seed, **_DECODER, max_position_embeddings=32)


def xglm(seed: int = 0):
    fields = dict(d_model=32, ffn_dim=48, num_layers=2, attention_heads=4, max_position_embeddings=32)
    return _lm("XGLMConfig", seed, **fields)


def electra(seed: int = 0):
    fields = dict(vocab_size=VOCAB, embedding_size=32, max_position_embeddings=32, **_ENCODER)
    return _build("ElectraConfig", "AutoModelForSequenceClassification", seed, **fields), _tokens(seed)


def xlm_roberta(seed: int = 0):
    fields = dict(vocab_size=VOCAB, max_position_embeddings=40, pad_token_id=1, **_ENCODER)
    return _build("XLMRobertaConfig", "AutoModelForSequenceClassification", seed, **fields), _tokens(seed)


def deit(seed: int = 0):
    fields = dict(image_size=32, patch_size=8, num_labels=3, **_ENCODER)
    return _build("DeiTConfig", "DeiTForImageClassification", seed, **fields), _pixels(seed)


def dinov2(seed: int = 0):  # layer scale over the hidden size
    fields = dict(image_size=32, patch_size=8, num_labels=3, hidden_size=32, num_hidden_layers=2)
    fields.update(num_attention_heads=4, mlp_ratio=2)
    return _build("Dinov2Config", "Dinov2ForImageClassification", seed, **fields), _pixels(seed)


def _bart_like(config: str, cls: str, seed: int, **extra: object):
    fields = dict(d_model=32, encoder_layers=2, decoder_layers=2, max_position_embeddings=32, **extra)
    fields.update(
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48
    )
    return _build(config, cls, seed, vocab_size=VOCAB, **fields), _tokens(seed, seq2seq=True)


def mbart(seed: int = 0):
    return _bart_like("MBartConfig", "MBartForConditionalGeneration", seed)


def pegasus(seed: int = 0):
    return _bart_like("PegasusConfig", "PegasusForConditionalGeneration", seed, decoder_start_token_id=0)


def marian(seed: int = 0):
    return _bart_like("MarianConfig", "MarianMTModel", seed, decoder_start_token_id=0, pad_token_id=VOCAB - 1)


def mt5(seed: int = 0):
    fields = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4)
    fields.update(relative_attention_num_buckets=8, decoder_start_token_id=0)
    model = _build("MT5Config", "MT5ForConditionalGeneration", seed, vocab_size=VOCAB, **fields)
    return model, _tokens(seed, seq2seq=True)


def mixtral(seed: int = 0):  # fused experts (structure/moe.py)
    return _lm(
        "MixtralConfig", seed, **_DECODER, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2
    )


def qwen2_moe(seed: int = 0):  # fused experts and a shared expert
    fields = dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40
    )
    return _lm("Qwen2MoeConfig", seed, **_DECODER, num_key_value_heads=2, **fields)


def _two_towers(config: str, cls: str, seed: int):  # CLIP / SigLIP: the image classifier on the vision tower
    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    text = dict(vocab_size=VOCAB, max_position_embeddings=16, **tower)
    fields = dict(text_config=text, vision_config=dict(image_size=32, patch_size=8, **tower))
    return _build(config, cls, seed, **fields), _pixels(seed)


def clip(seed: int = 0):
    return _two_towers("CLIPConfig", "CLIPForImageClassification", seed)


def siglip(seed: int = 0):
    return _two_towers("SiglipConfig", "SiglipForImageClassification", seed)


def whisper(seed: int = 0):  # log-mel input (8 bins, 32 frames)
    model, _ = _bart_like("WhisperConfig", "WhisperForConditionalGeneration", seed, num_mel_bins=8,
                          max_source_positions=16, max_target_positions=16, decoder_start_token_id=0,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 8, 32, generator=g)
    return model, {
        "input_features": features,
        "decoder_input_ids": torch.randint(1, VOCAB, (2, 5), generator=g),
    }


def wav2vec2(seed: int = 0):  # raw audio; the convolutional feature encoder is not grouped
    fields = dict(conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16)
    fields.update(num_conv_pos_embedding_groups=4, num_labels=3, **_ENCODER)
    model = _build("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", seed, **fields)
    return model, {"input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(seed))}


def persimmon(seed: int = 0):  # fused, interleaved, q/k LayerNorm of head_dim shared by the heads
    return _lm("PersimmonConfig", seed, **_DECODER, qk_layernorm=True)


def albert(seed: int = 0):  # one layer shared by every depth: its groups prune all of them
    fields = dict(vocab_size=VOCAB, embedding_size=16, max_position_embeddings=32, **_ENCODER)
    return _build("AlbertConfig", "AlbertForSequenceClassification", seed, **fields), _tokens(seed)


BUILDERS: dict[str, Callable[..., tuple[nn.Module, dict[str, Tensor]]]] = {
    f.__name__: f
    for f in (
        llama, mistral, qwen2, bert, roberta, distilbert, vit, gpt2, gpt_neox, falcon, falcon_gqa, phi,
        phi3, opt, bart, t5, t5_gated, stablelm, stablelm_qknorm, olmo2, cohere_qknorm, swin, beit,
        gemma, gemma2, granite, qwen3, olmo, starcoder2, gptj, gpt_bigcode, biogpt, xglm, electra,
        xlm_roberta, deit, dinov2, mbart, pegasus, marian, mt5, mixtral, qwen2_moe,
        clip, siglip, whisper, wav2vec2, persimmon, albert, deberta_v2, deberta_v2_pos, mpnet, codegen,
        beit_shared,
    )
}  # fmt: skip

# what find_groups covers: head groups offered, and whether a uniform prune of every group is
# expressible in config.json (save_pretrained + from_pretrained rebuild the pruned model). False where
# the family computes the head size as hidden / heads (BERT, GPT-2, GPT-NeoX, Falcon, OPT, BART,
# StableLM, MPNet, CodeGen), builds the output projection hidden x hidden (DeBERTa-v2) or sets widths
# per stage (Swin). "heads": head prunes exact to 1e-5; not OLMo2 at its eps 1e-5
# (its q/k RMSNorm over all heads is rescaled, exact but for eps: tests/coverage_cases.py)
_NO_CONFIG = {  # uniform prunes that config.json cannot express
    "bert", "roberta", "distilbert", "gpt2", "gpt_neox", "falcon", "falcon_gqa", "opt", "bart",
    "stablelm", "stablelm_qknorm", "swin", "starcoder2", "gptj", "gpt_bigcode", "biogpt", "xglm",
    "electra", "xlm_roberta", "dinov2", "mbart", "pegasus", "marian", "clip", "siglip", "whisper",
    "wav2vec2", "persimmon", "albert", "deberta_v2", "deberta_v2_pos", "mpnet", "codegen",
}  # fmt: skip
SUPPORTED: dict[str, dict[str, bool]] = {
    name: {"heads": name != "olmo2", "exact": True, "from_pretrained": name not in _NO_CONFIG}
    for name in BUILDERS
}
