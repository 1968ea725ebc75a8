"""The library zoo: archlint over the architectures people actually train, scored against reality.

Opt-in benchmark (issue 9).  For every model of torchvision (each classification builder plus the
backbones of the segmentation and detection models), of timm (about 170 architectures, the
smallest variant of each family) and of Hugging Face transformers (about 40 architectures built
from tiny configs), all with random initialisation and nothing downloaded:

1. build the model (seeded), find the smallest input that works (64x64 images first);
2. ``archlint.lint`` it: status, tracer, findings, per-layer predicted weight-gradient RMS,
   the vanishing/exploding verdicts' earliest/last layers, notes;
3. build it again with the same seed (the weights are checked to be identical) and run the probe
   the estimate predicts, with code of this file (not ``archlint.measure``): train mode, N(0, 1)
   inputs (integer ids uniform in ``[0, high)``), ``loss = sum(y * r) / sqrt(numel(y))`` with
   ``r ~ N(0, 1)`` from a generator independent of the inputs', one backward, per module that
   owns a >= 2-dim parameter the RMS of those parameters' gradients;
4. score the estimate: median and worst-layer |log10 pred - log10 meas - offset| (offset: the
   model's median log ratio), the spread error (predicted minus measured decades between the
   verdict's earliest and last layers), AL105/AL106 from archlint vs. from the measurement, and
   layers predicted zero but measured non-zero (or the reverse).

Each model runs in a worker process with a time limit; a failure (build, lint, measure, timeout,
crash) is recorded with its reason and the run goes on.

    python benchmarks/zoo_libraries.py [--library torchvision|timm|hf ...] [--sample]
        [--filter SUBSTR ...] [--json OUT] [--timeout SECONDS] [--details]
    python benchmarks/zoo_libraries.py --from-json OUT [--details]     # re-summarise a run
    ./dev zoo [ARGS]        # the same, in its own venv (.venv-zoo: torch + torchvision, timm,
                            # transformers), nice'd

This module imports nothing heavy at the top: the parent process only schedules and scores; the
worker imports torch and the libraries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

LIBRARIES = ("torchvision", "timm", "hf")

# ---------------------------------------------------------------------------------------------
# Model lists
# ---------------------------------------------------------------------------------------------

#: Segmentation and detection models whose ``.backbone`` is linted (built with weights=None,
#: weights_backbone=None).  Mask/keypoint R-CNN share the Faster R-CNN backbones and are left out.
TV_BACKBONES = [
    "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
    "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
]

#: timm: the smallest variant of each family (grouped as in timm's modules).
TIMM_MODELS = [
    # ResNets, ResNet-D and relatives
    "test_resnet", "resnet18", "resnet18d", "resnet26t", "resnet50_gn", "seresnet18",
    "ecaresnet26t", "resnetblur18", "resnetaa34d", "resnetrs50", "legacy_seresnet18",
    "skresnet18", "resnest14d", "res2net50_14w_8s", "tresnet_m", "dpn48b", "selecsls42b",
    # ResNetV2 / BiT (weight-standardised convs + GroupNorm), FRN, EvoNorm
    "resnetv2_18", "resnetv2_50x1_bit", "resnetv2_50d_frn", "resnetv2_50d_evos", "resnetv2_50d_gn",
    # normaliser-free nets
    "test_nfnet", "nf_resnet26", "nf_regnet_b0", "nf_ecaresnet26", "dm_nfnet_f0", "eca_nfnet_l0",
    # EfficientNet family
    "test_efficientnet", "test_efficientnet_ln", "efficientnet_b0", "tf_efficientnet_b0",
    "efficientnet_lite0", "efficientnetv2_rw_t", "tf_efficientnetv2_b0", "efficientnet_b0_gn",
    "efficientnet_cc_b0_4e", "mixnet_s", "mnasnet_small", "semnasnet_050", "spnasnet_100",
    "fbnetc_100", "tinynet_e", "mobilenet_edgetpu_v2_xs",
    # MobileNets v1-v4 and relatives
    "mobilenetv1_100", "mobilenetv2_050", "mobilenetv3_small_050", "mobilenetv3_large_075",
    "tf_mobilenetv3_small_minimal_100", "mobilenetv4_conv_small_035",
    "mobilenetv4_hybrid_medium_075", "lcnet_035", "fbnetv3_b", "hardcorenas_a",
    # RegNets
    "regnetx_002", "regnety_002", "regnetz_005", "regnetz_b16",
    # other CNNs
    "densenet121", "densenetblur121d", "rexnet_100", "rexnetr_100", "dla34", "dla46x_c",
    "hrnet_w18_small", "cspresnet50", "cspdarknet53", "cs3darknet_s", "darknet17", "cspnext_tiny",
    "ese_vovnet19b_slim_dw", "ghostnet_050", "ghostnetv2_100", "ghostnetv3_050",
    "repghostnet_050", "legacy_xception", "xception41", "inception_v3", "inception_v4",
    "inception_resnet_v2", "vgg11", "vgg11_bn", "repvgg_a0", "mobileone_s0", "gernet_s",
    "hgnetv2_b0", "hgnet_tiny", "lcnetv2_small", "starnet_s050", "fasternet_t0", "repvit_m0_9",
    "nasnetalarge", "pnasnet5large", "convmixer_768_32",
    # CNNs with attention blocks
    "botnet26t_256", "halonet26t", "lambda_resnet26t", "gcresnet33ts", "eca_resnext26ts",
    # ViT, DeiT, EVA, BEiT and other plain transformers
    "test_vit", "vit_tiny_patch16_224", "vit_small_patch32_224", "vit_tiny_r_s16_p8_224",
    "vit_relpos_small_patch16_224", "vit_wee_patch16_reg1_gap_256", "vit_small_patch16_rope_224",
    "vit_small_patch14_dinov2", "vit_pe_core_tiny_patch16_384", "flexivit_small",
    "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
    "eva02_tiny_patch14_224", "beit_base_patch16_224", "cait_xxs24_224", "xcit_nano_12_p16_224",
    "pit_ti_224", "tnt_s_patch16_224", "convit_tiny", "crossvit_tiny_240", "volo_d1_224",
    "levit_128s", "levit_conv_128s", "mvitv2_tiny", "nest_tiny", "pvt_v2_b0", "twins_pcpvt_small",
    "twins_svt_small", "visformer_tiny", "tiny_vit_5m_224", "hiera_tiny_224", "vitamin_small_224",
    # windowed / multi-axis attention
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_224",
    "swin_s3_tiny_224", "davit_tiny", "focalnet_tiny_srf", "gcvit_xxtiny", "test_maxvit",
    "test_coatnet", "maxvit_pico_rw_256", "maxvit_rmlp_pico_rw_256", "coatnet_pico_rw_224",
    "coatnet_nano_cc_224", "maxxvitv2_nano_rw_256",
    # ConvNeXt and relatives
    "test_convnext", "convnext_atto", "convnext_zepto_rms", "convnextv2_atto",
    "inception_next_atto", "rdnet_tiny", "mambaout_femto",
    # conv/attention hybrids
    "coat_lite_tiny", "coat_tiny", "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small",
    "efficientformer_l1", "efficientformerv2_s0", "efficientvit_b0", "efficientvit_m0",
    "fastvit_t8", "fastvit_mci0", "swiftformer_xs", "nextvit_small", "shvit_s1", "efficientvim_m1",
    "iformer_t", "lowformer_b0",
    # MLPs and metaformers
    "mixer_s32_224", "resmlp_12_224", "gmlp_ti16_224", "gmixer_12_224", "poolformer_s12",
    "poolformerv2_s12", "convformer_s18", "caformer_s18", "sequencer2d_s",
]

#: Hugging Face transformers architectures (configs in :func:`_hf_catalog`).
HF_MODELS = [
    "bert", "roberta", "distilbert", "albert", "electra", "deberta_v2", "mpnet", "xlnet",
    "modernbert", "gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "llama",
    "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "phi", "phi3", "gemma", "gemma2",
    "olmo2", "starcoder2", "mamba", "t5", "bart", "pegasus", "marian", "whisper", "vit",
    "clip_vision", "dinov2", "swin", "convnext", "wav2vec2",
]

#: ``--sample``: a handful per library, chosen for speed and variety (CI).
SAMPLE = {
    "torchvision": ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5",
                    "lraspp_mobilenet_v3_large.backbone"],
    "timm": ["test_resnet", "test_vit", "test_convnext", "test_efficientnet", "test_nfnet",
             "mobilenetv3_small_050"],
    "hf": ["bert", "gpt2", "llama", "t5", "vit"],
}

#: Image sizes tried in this order until the model builds and runs at one of them.
IMAGE_SIZES = [64, 70, 75, 96, 112, 128, 160, 192, 224, 240, 256, 299, 300, 320, 331, 384]

BATCH = 2
SEQ = 32
VOCAB = 1000
BUILD_SEED = 0      # torch.manual_seed before each build
INPUT_SEED = 1234   # generator of the probe's inputs
PROBE_SEED = 98765  # generator of r (independent of the inputs')
FORWARD_SEED = 7    # global RNG during the probe's forward (dropout)


# ---------------------------------------------------------------------------------------------
# Worker side: building, linting, measuring (imports torch lazily)
# ---------------------------------------------------------------------------------------------


class Prepared:
    """A model ready to lint: how to build it again, its input spec and the first instance."""

    def __init__(self, build: Callable[[], Any], spec: dict, desc: str, model: Any = None):
        self.build, self.spec, self.desc, self.model = build, spec, desc, model


def _seeded(fn: Callable[[], Any]) -> Any:
    import random

    import numpy as np
    import torch

    torch.manual_seed(BUILD_SEED)
    random.seed(BUILD_SEED)
    np.random.seed(BUILD_SEED)
    return fn()


def _runs_at(model: Any, size: int, batch: int = BATCH) -> tuple[Optional[str], int]:
    """(None, n) if a train-mode forward at ``size`` works (the probe's mode: auxiliary heads
    run), else (the error, 0); ``n`` is the fewest values per channel any batch norm layer
    normalises over.  Modes and buffers are restored, the global RNG is untouched."""
    import torch
    from torch import nn

    modes = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    seen: list[int] = []

    def hook(mod: Any, args: tuple, out: Any) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1]:
            seen.append(x.numel() // x.shape[1])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        model.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.randn(batch, 3, size, size))
        return None, min(seen) if seen else 1 << 30
    except Exception as exc:  # noqa: BLE001 -- any failure means "not this size"
        return f"{type(exc).__name__}: {exc}"[:200], 0
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


#: Batch norm in train mode over very few values is a degenerate regime (over 2 values its output
#: is +-1 whatever the input: the gradient through it comes from eps alone).  Image models whose
#: deepest batch norm would see fewer values per channel than this at batch 2 get a larger batch.
MIN_BN_VALUES = 8
MAX_BATCH = 16


def _find_image_input(build_at: Callable[[Optional[int]], Any], size_kwarg: bool) -> Prepared:
    """The smallest working image size (a model whose constructor takes the size is rebuilt for
    each size tried; others are built once and run at each size), at batch 2, or a larger batch
    when a batch norm layer would normalise over fewer than MIN_BN_VALUES values per channel."""
    errors = []
    model = None
    for size in IMAGE_SIZES:
        if size_kwarg or model is None:
            try:
                model = _seeded(lambda: build_at(size if size_kwarg else None))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{size}: build {type(exc).__name__}: {exc}"[:200])
                model = None
                continue
        err, per_channel = _runs_at(model, size)
        if err is not None:
            errors.append(f"{size}: {err}")
            continue
        batch = BATCH
        if per_channel < MIN_BN_VALUES:
            # values per channel grow with the batch: per_channel / BATCH per sample
            per_sample = max(per_channel // BATCH, 1)
            batch = min(MAX_BATCH, -(-MIN_BN_VALUES // per_sample))
            if batch != BATCH and _runs_at(model, size, batch)[0] is not None:
                batch = BATCH
        s = size

        def build() -> Any:
            return _seeded(lambda: build_at(s if size_kwarg else None))

        spec = {"shape": [batch, 3, size, size], "dtype": "float32"}
        return Prepared(build, spec, f"{batch}x3x{size}x{size}", model)
    raise RuntimeError("no input size works: " + " | ".join(errors[:3]) + " ...")


def _list_models(library: str) -> list[str]:
    if library == "torchvision":
        import torchvision
        import torchvision.models as tvm

        del torchvision
        return list(tvm.list_models(module=tvm)) + [f"{n}.backbone" for n in TV_BACKBONES]
    if library == "timm":
        import timm

        del timm
        return list(TIMM_MODELS)
    if library == "hf":
        import transformers

        del transformers
        return list(HF_MODELS)
    raise ValueError(f"unknown library {library!r}")


#: Suffix of the variant of a model whose zero-initialised layers (a zero head cuts every
#: gradient but its own) are re-initialised with their module's default init.
HEAD_INIT = "#head-init"


def zero_layers(model: Any) -> list[str]:
    """Modules whose own >= 2-dim parameters are all exactly zero."""
    out = []
    for name, mod in model.named_modules():
        mats = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
        if mats and all(not bool(p.detach().any()) for p in mats):
            out.append(name)
    return out


def _reinit_zero_layers(model: Any) -> Any:
    import torch
    from torch import nn

    mods = dict(model.named_modules())
    with torch.no_grad():
        for name in zero_layers(model):
            mod = mods[name]
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
            else:
                for p in mod.parameters(recurse=False):
                    if p.dim() >= 2:
                        nn.init.kaiming_uniform_(p, a=math.sqrt(5))
    return model


def _prepare(library: str, name: str) -> Prepared:
    if name.endswith(HEAD_INIT):
        base = _prepare(library, name[: -len(HEAD_INIT)])
        build = base.build
        return Prepared(lambda: _reinit_zero_layers(build()), base.spec,
                        base.desc + " zero layers re-initialised")
    if library == "torchvision":
        return _prepare_torchvision(name)
    if library == "timm":
        return _prepare_timm(name)
    return _prepare_hf(name)


def _prepare_torchvision(name: str) -> Prepared:
    import torchvision.models as tvm
    import torchvision.models.detection as tvd
    import torchvision.models.segmentation as tvs

    if name.endswith(".backbone"):
        base = name[: -len(".backbone")]
        fn = getattr(tvs, base, None) or getattr(tvd, base)

        def build_at(size: Optional[int]) -> Any:
            return fn(weights=None, weights_backbone=None).backbone

        return _find_image_input(build_at, size_kwarg=False)
    fn = tvm.get_model_builder(name)
    if name.startswith("vit_"):
        return _find_image_input(lambda s: fn(weights=None, image_size=s), size_kwarg=True)
    if name.startswith("maxvit"):
        return _find_image_input(lambda s: fn(weights=None, input_size=(s, s)), size_kwarg=True)
    return _find_image_input(lambda s: fn(weights=None), size_kwarg=False)


def _prepare_timm(name: str) -> Prepared:
    import timm

    if name not in timm.list_models():
        raise LookupError(f"{name} is not a model of timm {timm.__version__}")
    # Does the constructor take img_size?  Build once at 64 to find out.
    try:
        _seeded(lambda: timm.create_model(name, pretrained=False, img_size=IMAGE_SIZES[0]))
        takes_size = True
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        takes_size = False
    except Exception:  # noqa: BLE001 -- takes the size, but not this one
        takes_size = True

    def build_at(size: Optional[int]) -> Any:
        kwargs = {"img_size": size} if size is not None else {}
        return timm.create_model(name, pretrained=False, **kwargs)

    return _find_image_input(build_at, size_kwarg=takes_size)


def _ids(high: int = VOCAB, seq: int = SEQ) -> dict:
    return {"shape": [BATCH, seq], "dtype": "int64", "high": high}


def _floats(*shape: int) -> dict:
    return {"shape": list(shape), "dtype": "float32"}


def _hf_catalog() -> dict[str, tuple[Callable[[], Any], dict]]:
    """name -> (build, input spec).  Tiny configs: hidden 64, 2 layers, 4 heads, vocab 1000."""
    import transformers as tf

    V, H, L, NH, FF, P = VOCAB, 64, 2, 4, 128, 128
    ids = {"input_ids": _ids()}
    s2s = {"input_ids": _ids(), "decoder_input_ids": _ids(seq=16)}
    tok = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    enc = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
               intermediate_size=FF, max_position_embeddings=P)
    dec = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
               intermediate_size=FF, max_position_embeddings=P, **tok)
    llama_like = dict(dec, num_key_value_heads=2)
    bart_like = dict(vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=L,
                     encoder_attention_heads=NH, decoder_attention_heads=NH, encoder_ffn_dim=FF,
                     decoder_ffn_dim=FF, max_position_embeddings=P, decoder_start_token_id=2,
                     **tok)

    def m(cls: str, cfg: str, **kw: Any) -> Callable[[], Any]:
        return lambda: getattr(tf, cls)(getattr(tf, cfg)(**kw))

    cat: dict[str, tuple[Callable[[], Any], dict]] = {
        "bert": (m("BertModel", "BertConfig", **enc), ids),
        "roberta": (m("RobertaModel", "RobertaConfig", **dict(enc, max_position_embeddings=P + 2),
                      pad_token_id=1), ids),
        "distilbert": (m("DistilBertModel", "DistilBertConfig", vocab_size=V, dim=H, n_layers=L,
                         n_heads=NH, hidden_dim=FF, max_position_embeddings=P), ids),
        "albert": (m("AlbertModel", "AlbertConfig", embedding_size=32, **enc), ids),
        "electra": (m("ElectraModel", "ElectraConfig", embedding_size=32, **enc), ids),
        "deberta_v2": (m("DebertaV2Model", "DebertaV2Config", **enc), ids),
        "mpnet": (m("MPNetModel", "MPNetConfig", **enc), ids),
        "xlnet": (m("XLNetModel", "XLNetConfig", vocab_size=V, d_model=H, n_layer=L, n_head=NH,
                    d_inner=FF), ids),
        "modernbert": (m("ModernBertModel", "ModernBertConfig", **enc, global_attn_every_n_layers=2,
                         local_attention=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         cls_token_id=1, sep_token_id=2), ids),
        "gpt2": (m("GPT2LMHeadModel", "GPT2Config", vocab_size=V, n_positions=P, n_embd=H,
                   n_layer=L, n_head=NH, bos_token_id=1, eos_token_id=2), ids),
        "gpt_neo": (m("GPTNeoForCausalLM", "GPTNeoConfig", vocab_size=V, max_position_embeddings=P,
                      hidden_size=H, num_layers=L, num_heads=NH, intermediate_size=FF,
                      attention_types=[[["global", "local"], 1]], window_size=8,
                      bos_token_id=1, eos_token_id=2), ids),
        "gpt_neox": (m("GPTNeoXForCausalLM", "GPTNeoXConfig", **dec), ids),
        "gptj": (m("GPTJForCausalLM", "GPTJConfig", vocab_size=V, n_positions=P, n_embd=H,
                   n_layer=L, n_head=NH, rotary_dim=8, bos_token_id=1, eos_token_id=2), ids),
        "opt": (m("OPTForCausalLM", "OPTConfig", vocab_size=V, hidden_size=H, num_hidden_layers=L,
                  num_attention_heads=NH, ffn_dim=FF, max_position_embeddings=P,
                  word_embed_proj_dim=H, **tok), ids),
        "bloom": (m("BloomForCausalLM", "BloomConfig", vocab_size=V, hidden_size=H, n_layer=L,
                    n_head=NH, **tok), ids),
        "falcon": (m("FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=H,
                     num_hidden_layers=L, num_attention_heads=NH, bos_token_id=1, eos_token_id=2),
                   ids),
        "llama": (m("LlamaForCausalLM", "LlamaConfig", **llama_like), ids),
        "mistral": (m("MistralForCausalLM", "MistralConfig", **llama_like, sliding_window=16), ids),
        "mixtral": (m("MixtralForCausalLM", "MixtralConfig", **llama_like, num_local_experts=4,
                      num_experts_per_tok=2), ids),
        "qwen2": (m("Qwen2ForCausalLM", "Qwen2Config", **llama_like), ids),
        "qwen2_moe": (m("Qwen2MoeForCausalLM", "Qwen2MoeConfig", **llama_like, num_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=64,
                        shared_expert_intermediate_size=128), ids),
        "qwen3": (m("Qwen3ForCausalLM", "Qwen3Config", **llama_like, head_dim=16), ids),
        "phi": (m("PhiForCausalLM", "PhiConfig", **dec), ids),
        "phi3": (m("Phi3ForCausalLM", "Phi3Config", **llama_like), ids),
        "gemma": (m("GemmaForCausalLM", "GemmaConfig", **llama_like, head_dim=16), ids),
        "gemma2": (m("Gemma2ForCausalLM", "Gemma2Config", **llama_like, head_dim=16,
                     sliding_window=16), ids),
        "olmo2": (m("Olmo2ForCausalLM", "Olmo2Config", **llama_like), ids),
        "starcoder2": (m("Starcoder2ForCausalLM", "Starcoder2Config", **llama_like), ids),
        "mamba": (m("MambaForCausalLM", "MambaConfig", vocab_size=V, hidden_size=H,
                    num_hidden_layers=L, state_size=8, expand=2, conv_kernel=4, **tok), ids),
        "t5": (m("T5ForConditionalGeneration", "T5Config", vocab_size=V, d_model=H, d_kv=16,
                 d_ff=FF, num_layers=L, num_heads=NH, decoder_start_token_id=0, pad_token_id=0,
                 eos_token_id=1), s2s),
        "bart": (m("BartForConditionalGeneration", "BartConfig", **bart_like), s2s),
        "pegasus": (m("PegasusForConditionalGeneration", "PegasusConfig", **bart_like), s2s),
        "marian": (m("MarianMTModel", "MarianConfig", **bart_like), s2s),
        "whisper": (m("WhisperForConditionalGeneration", "WhisperConfig", vocab_size=V,
                      num_mel_bins=16, d_model=H, encoder_layers=L, decoder_layers=L,
                      encoder_attention_heads=NH, decoder_attention_heads=NH, encoder_ffn_dim=FF,
                      decoder_ffn_dim=FF, max_source_positions=16, max_target_positions=P,
                      decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      suppress_tokens=[], begin_suppress_tokens=[]),
                    {"input_features": _floats(BATCH, 16, 32), "decoder_input_ids": _ids(seq=16)}),
        "vit": (m("ViTForImageClassification", "ViTConfig", hidden_size=H, num_hidden_layers=L,
                  num_attention_heads=NH, intermediate_size=FF, image_size=32, patch_size=8,
                  num_labels=10), {"pixel_values": _floats(BATCH, 3, 32, 32)}),
        "clip_vision": (m("CLIPVisionModel", "CLIPVisionConfig", hidden_size=H,
                          num_hidden_layers=L, num_attention_heads=NH, intermediate_size=FF,
                          image_size=32, patch_size=8, projection_dim=H),
                        {"pixel_values": _floats(BATCH, 3, 32, 32)}),
        "dinov2": (m("Dinov2Model", "Dinov2Config", hidden_size=H, num_hidden_layers=L,
                     num_attention_heads=NH, mlp_ratio=2, image_size=32, patch_size=8),
                   {"pixel_values": _floats(BATCH, 3, 32, 32)}),
        "swin": (m("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=2,
                   embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10),
                 {"pixel_values": _floats(BATCH, 3, 32, 32)}),
        "convnext": (m("ConvNextForImageClassification", "ConvNextConfig", num_channels=3,
                       num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10),
                     {"pixel_values": _floats(BATCH, 3, 32, 32)}),
        "wav2vec2": (m("Wav2Vec2Model", "Wav2Vec2Config", hidden_size=H, num_hidden_layers=L,
                       num_attention_heads=NH, intermediate_size=FF, conv_dim=(32, 32, 32),
                       conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4, vocab_size=32),
                     {"input_values": _floats(BATCH, 1600)}),
    }
    return cat


def _prepare_hf(name: str) -> Prepared:
    build, spec = _hf_catalog()[name]
    desc = ", ".join(f"{k} {'x'.join(map(str, v['shape']))}" for k, v in spec.items())

    def seeded_build() -> Any:
        return _seeded(build)

    return Prepared(seeded_build, spec, desc)


# --- the probe (independent of archlint.measure) ---------------------------------------------

_DTYPES = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32"}


def make_inputs(spec: dict, seed: int = INPUT_SEED) -> Any:
    """Tensors for a spec: N(0, 1) floats, integer ids uniform in [low, high); a dict spec gives
    a dict of tensors drawn in its order from one generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def one(s: dict) -> Any:
        dtype = getattr(torch, _DTYPES[s.get("dtype", "float32")])
        shape = tuple(s["shape"])
        if dtype.is_floating_point:
            return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        return torch.randint(s.get("low", 0), s["high"], shape, generator=gen, dtype=dtype)

    if "shape" in spec:
        return one(spec)
    return {k: one(v) for k, v in spec.items()}


def pick_output(out: Any) -> Any:
    """The probe's y: a tensor as is; a mapping / ModelOutput: ``logits``, else
    ``last_hidden_state``, else its first tensor; a tuple/list: its first tensor."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "keys") and hasattr(out, "__getitem__"):
        keys = list(out.keys())
        for k in ("logits", "last_hidden_state"):
            if k in keys and isinstance(out[k], torch.Tensor):
                return out[k]
        for k in keys:
            found = pick_output(out[k])
            if found is not None:
                return found
        return None
    if isinstance(out, (tuple, list)):
        for item in out:
            found = pick_output(item)
            if found is not None:
                return found
    return None


def probe(model: Any, inputs: Any, probe_seed: int = PROBE_SEED, forward_seed: int = FORWARD_SEED
          ) -> tuple[dict[str, Optional[float]], list[int]]:
    """One forward/backward in train mode; module name -> weight-gradient RMS (see module doc)."""
    import torch

    owners = []
    for name, mod in model.named_modules():
        mats = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
        if mats:
            owners.append((name, mats))
    trainable = list({id(p): p for _, ps in owners for p in ps if p.requires_grad}.values())
    model.train()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(forward_seed)
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        y = pick_output(out)
        if y is None:
            raise TypeError(f"no tensor in the output ({type(out).__name__})")
        if not y.is_floating_point():
            raise TypeError(f"output dtype {y.dtype} is not floating")
        gen = torch.Generator().manual_seed(probe_seed)
        r = torch.randn(y.shape, generator=gen, dtype=torch.float32).to(y.dtype)
        loss = (y * r).sum() / math.sqrt(max(y.numel(), 1))
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
    got = {id(p): g for p, g in zip(trainable, grads)}
    rms: dict[str, Optional[float]] = {}
    for name, mats in owners:
        sq, n = 0.0, 0
        live = [p for p in mats if p.requires_grad]
        if not live:
            rms[name] = None
            continue
        for p in live:
            g = got.get(id(p))
            if g is not None:
                sq += float(g.detach().double().pow(2).sum())
            n += p.numel()
        rms[name] = math.sqrt(sq / n)
    return rms, list(y.shape)


def fingerprint(model: Any) -> str:
    """Hash of every parameter and buffer (names and bytes)."""
    import hashlib

    import torch

    h = hashlib.sha1()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        flat = t.detach().reshape(-1).contiguous()
        if flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


_UNKNOWN_OPS = re.compile(r"ops without a formula, passed through unchanged: (.*)$")


def parse_unknown_ops(notes: list[str]) -> dict[str, int]:
    """'... passed through unchanged: a (x3), b' -> {'a': 3, 'b': 1}."""
    out: dict[str, int] = {}
    for note in notes:
        m = _UNKNOWN_OPS.search(note)
        if not m:
            continue
        for item in m.group(1).split(", "):
            mm = re.match(r"(.*?) \(x(\d+)\)$", item.strip())
            if mm:
                out[mm.group(1)] = out.get(mm.group(1), 0) + int(mm.group(2))
            elif item.strip():
                out[item.strip()] = out.get(item.strip(), 0) + 1
    return out


def run_model(library: str, name: str, send: Callable[[dict], None]) -> dict:
    """Build, lint, measure one model; ``send`` gets the partial record after each stage."""
    import gc

    import torch

    rec: dict[str, Any] = {"library": library, "name": name, "stage": "build", "build_ok": False}
    t0 = time.perf_counter()
    try:
        prep = _prepare(library, name)
        model = prep.model if prep.model is not None else prep.build()
    except Exception as exc:  # noqa: BLE001
        rec["error"] = f"build: {type(exc).__name__}: {exc}"[:500]
        return rec
    rec.update(build_ok=True, input=prep.desc, spec=prep.spec,
               build_s=round(time.perf_counter() - t0, 2),
               params=sum(p.numel() for p in model.parameters()))
    built_print = fingerprint(model)
    rec["zero_layers"] = zero_layers(model)
    rec["stage"] = "lint"
    send(rec)

    import archlint

    t1 = time.perf_counter()
    try:
        report = archlint.lint(model, example_input=prep.spec, name=f"{library}:{name}",
                               fixes=False)
        target = report.targets[0].to_dict()
    except Exception as exc:  # noqa: BLE001 -- lint() is meant to never raise for a model
        rec["lint_s"] = round(time.perf_counter() - t1, 2)
        rec["lint_status"] = "crash"
        rec["lint_error"] = f"{type(exc).__name__}: {exc}"[:500]
        rec["lint_traceback"] = traceback.format_exc()[-2000:]
        target = None
    else:
        rec["lint_s"] = round(time.perf_counter() - t1, 2)
        rec["lint_status"] = target["status"]
        rec["lint_error"] = target["error"]
        rec["tracer"] = target["tracer"]
        rec["findings"] = [{k: f.get(k) for k in ("code", "severity", "message", "module")}
                           for f in target["findings"]]
        rec["notes"] = target["notes"]
        rec["unknown_ops"] = parse_unknown_ops(target["notes"])
        rec["gradient_decades"] = target.get("gradient_decades")
        rec["gradient_flow"] = target.get("gradient_flow")
        rec["pred"] = {lay["module"]: lay["grad_rms"] for lay in target["layers"]}
        rec["types"] = {lay["module"]: lay["type"] for lay in target["layers"]}
    del model, prep.model
    report = None  # noqa: F841 -- the report holds the graph
    gc.collect()
    rec["stage"] = "measure"
    send(rec)

    t2 = time.perf_counter()
    try:
        fresh = prep.build()
        rec["weights_identical"] = fingerprint(fresh) == built_print
        rms, y_shape = probe(fresh, make_inputs(prep.spec))
        rec["meas"] = rms
        rec["output_shape"] = y_shape
        # The probe again with other seeds (inputs, r, dropout): the measurement's own noise,
        # a floor under the error figures (batch 2, stochastic depth, dropout...).
        rec["meas2"], _ = probe(fresh, make_inputs(prep.spec, INPUT_SEED + 1), PROBE_SEED + 1,
                                FORWARD_SEED + 1)
        if "types" not in rec:
            rec["types"] = {n: type(m).__name__ for n, m in fresh.named_modules() if n in rms}
        del fresh
    except Exception as exc:  # noqa: BLE001
        rec["measure_error"] = f"{type(exc).__name__}: {exc}"[:500]
    rec["measure_s"] = round(time.perf_counter() - t2, 2)
    rec["stage"] = "done"
    gc.collect()
    rec["rss_mb"] = round(_rss_mb())
    del torch
    return rec


def _worker_main(conn: Any, log_path: str) -> None:
    """Worker loop: ('list', lib) / ('run', lib, name) -> replies on ``conn``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "list":
            try:
                conn.send(("list", _list_models(msg[1])))
            except Exception as exc:  # noqa: BLE001 -- the library does not import
                conn.send(("nolib", f"{type(exc).__name__}: {exc}"[:300]))
        elif msg[0] == "run":
            print(f"=== {msg[1]}:{msg[2]}", flush=True)
            rec = run_model(msg[1], msg[2], lambda r: conn.send(("partial", dict(r))))
            conn.send(("done", rec))


# ---------------------------------------------------------------------------------------------
# Parent side: scheduling with time limits
# ---------------------------------------------------------------------------------------------


class Worker:
    """A persistent worker process; restarted after a timeout, a crash or high memory."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.proc = None
        self.conn = None

    def start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.log_path), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
            self.proc.join(5)
        except (OSError, EOFError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.proc = self.conn = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(10)
        self.proc = self.conn = None

    def ask(self, msg: tuple, timeout: float) -> tuple[str, Any, Optional[dict]]:
        """Send ``msg``; returns (kind, payload, last partial).  kind 'timeout' / 'crash' when
        the worker did not answer (it is then killed)."""
        if self.proc is None:
            self.start()
        self.conn.send(msg)
        deadline = time.monotonic() + timeout
        partial = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return "timeout", None, partial
            try:
                if not self.conn.poll(min(left, 5.0)):
                    if not self.proc.is_alive():
                        code = self.proc.exitcode
                        self.kill()
                        return "crash", f"worker died (exit code {code})", partial
                    continue
                kind, payload = self.conn.recv()
            except (EOFError, OSError):
                code = self.proc.exitcode if self.proc else None
                self.kill()
                return "crash", f"worker died (exit code {code})", partial
            if kind == "partial":
                partial = payload
                continue
            return kind, payload, partial


# ---------------------------------------------------------------------------------------------
# Scoring (pure Python: also used on a saved --json file)
# ---------------------------------------------------------------------------------------------

VERDICT_LIMIT = 3.0
#: A model with fewer layers of measured positive gradient (a zero-initialised head leaves only
#: the head with a gradient) says nothing about the estimate ("degenerate"): left out of the
#: figures taken over models.  A model where archlint predicts zero for more than half of the
#: layers that measure positive ("collapsed") is an estimator failure: also left out of the
#: error medians (too few layers left to compare), listed and counted on its own.
MIN_LAYERS = 3
_UNDERFLOW = 1e-300


def _mean_log(names: list[str], values: dict, zero_as: Optional[float]) -> Optional[float]:
    logs = []
    for n in names:
        v = values.get(n)
        if v is None:
            return None
        if v <= 0:
            if zero_as is None:
                return None
            v = zero_as
        logs.append(math.log10(v))
    return sum(logs) / len(logs) if logs else None


def score(rec: dict) -> dict:
    """The accuracy figures of one record that has both ``pred`` and ``meas``."""
    pred, meas, types = rec.get("pred") or {}, rec.get("meas") or {}, rec.get("types") or {}
    out: dict[str, Any] = {}
    meas2 = rec.get("meas2") or {}
    pairs, zero_bad, unknown, missing = [], [], [], []
    zero_ok = 0
    for name, m in meas.items():
        if m is None:
            continue
        if name not in pred:
            missing.append(name)
            continue
        p = pred[name]
        if p is None:
            unknown.append(name)
        elif p > 0 and m > 0:
            pairs.append((name, p, m))
        elif p == 0 and m == 0:
            zero_ok += 1
        elif p == 0:
            zero_bad.append({"module": name, "type": types.get(name), "pred": 0.0, "meas": m,
                             "meas2": meas2.get(name), "kind": "predicted zero, measured non-zero"})
        else:
            zero_bad.append({"module": name, "type": types.get(name), "pred": p, "meas": 0.0,
                             "meas2": meas2.get(name),
                             "kind": "predicted non-zero, measured zero"})
    measured = sum(1 for m in meas.values() if m is not None and m > 0)
    pred_zero = sum(1 for z in zero_bad if z["pred"] == 0.0)
    out.update(layers=len(pairs), zero_ok=zero_ok, zero_bad=zero_bad, unknown=unknown,
               missing=missing, measured_layers=measured, degenerate=measured < MIN_LAYERS,
               collapsed=measured >= MIN_LAYERS and (pred_zero > 0.5 * measured
                                                     or len(pairs) < MIN_LAYERS))
    if pairs:
        d = [math.log10(p) - math.log10(m) for _, p, m in pairs]
        offset = statistics.median(d)
        resid = [x - offset for x in d]
        k = max(range(len(resid)), key=lambda i: abs(resid[i]))
        logm = [math.log10(m) for _, _, m in pairs]
        centre = statistics.median(logm)
        out.update(
            offset=offset,
            median_error=statistics.median(abs(x) for x in resid),
            worst_error=abs(resid[k]), worst_layer=pairs[k][0],
            worst_type=types.get(pairs[k][0]),
            baseline=statistics.median(abs(x - centre) for x in logm),
            residuals=[{"module": n, "type": types.get(n), "pred": p, "meas": m,
                        "resid": round(r, 4)} for (n, p, m), r in zip(pairs, resid)],
        )
    if meas2 and pairs:
        # the same figures between the two measurements (on the layers scored above)
        d2 = [(n, math.log10(m2) - math.log10(m)) for n, _, m in pairs
              if (m2 := meas2.get(n)) is not None and m2 > 0]
        if d2:
            off2 = statistics.median(x for _, x in d2)
            out["noise_median"] = statistics.median(abs(x - off2) for _, x in d2)
            out["noise_worst"] = max(abs(x - off2) for _, x in d2)
    flow = rec.get("gradient_flow") or {}
    for key in ("vanishing", "exploding"):
        f = flow.get(key)
        if not f:
            continue
        pe = _mean_log(f["earliest"], pred, _UNDERFLOW)
        pl = _mean_log(f["last"], pred, _UNDERFLOW)
        me = _mean_log(f["earliest"], meas, None)
        ml = _mean_log(f["last"], meas, None)
        pd = pe - pl if pe is not None and pl is not None else None
        md = me - ml if me is not None and ml is not None else None
        out[f"{key}_pred"] = pd
        out[f"{key}_archlint"] = f.get("decades")
        out[f"{key}_meas"] = md
        me2 = _mean_log(f["earliest"], meas2, None) if meas2 else None
        ml2 = _mean_log(f["last"], meas2, None) if meas2 else None
        if md is not None and me2 is not None and ml2 is not None:
            out[f"{key}_noise"] = (me2 - ml2) - md
        if pd is not None and md is not None:
            out[f"{key}_spread_error"] = pd - md
    if "vanishing_spread_error" in out:
        out["spread_error"] = out["vanishing_spread_error"]
    if "vanishing_noise" in out:
        out["spread_noise"] = out["vanishing_noise"]
    codes = {f["code"] for f in rec.get("findings") or []}
    verdicts = {}
    for code, key, fires in (("AL105", "vanishing_meas", lambda x: x < -VERDICT_LIMIT),
                             ("AL106", "exploding_meas", lambda x: x > VERDICT_LIMIT)):
        m = out.get(key)
        verdicts[code] = {"archlint": code in codes,
                          "measured": None if m is None else bool(fires(m))}
    out["verdicts"] = verdicts
    out["verdict_disagreements"] = [c for c, v in verdicts.items()
                                    if v["measured"] is not None and v["measured"] != v["archlint"]]
    return out


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def _f(v: Optional[float], fmt: str = ".3f", signed: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if signed else "") + fmt)


def status_of(rec: dict) -> str:
    if not rec.get("build_ok"):
        return "build-error" if rec.get("failure") is None else rec["failure"]
    if rec.get("failure"):
        return rec["failure"]
    if rec.get("lint_status") == "crash":
        return "lint-crash"
    if rec.get("lint_status") != "ok":
        return "lint-error"
    if rec.get("measure_error"):
        return "measure-error"
    return "ok"


def model_line(rec: dict) -> str:
    name = f"[{rec['library']}] {rec['name']}"
    st = status_of(rec)
    if st in ("build-error", "timeout", "crash") and not rec.get("lint_status"):
        reason = rec.get("error") or rec.get("failure_reason") or ""
        return f"{name:52s} {st.upper()}: {reason[:160]}"
    sev = Counter(f["severity"] for f in rec.get("findings") or [])
    codes = ",".join(sorted({f["code"] for f in rec.get("findings") or []})) or "-"
    parts = [f"{name:52s} {rec.get('lint_status', '?'):5s} {rec.get('tracer') or '-':4s}",
             f"{rec.get('input', '')[:28]:28s}", f"lint {_f(rec.get('lint_s'), '.1f')}s"]
    parts.append(f"find {sum(sev.values())}({codes})")
    s = rec.get("score")
    if s:
        if s.get("layers"):
            parts.append(f"med {_f(s.get('median_error'))} worst "
                         f"{_f(s.get('worst_error'), '.2f')} ({s.get('worst_layer')})")
            parts.append(f"spread {_f(s.get('spread_error'), '.2f', True)}")
            parts.append(f"noise {_f(s.get('noise_median'))}/{_f(s.get('noise_worst'), '.2f')}"
                         f"/{_f(s.get('spread_noise'), '.2f', True)}")
        else:
            parts.append("no layer with both gradients positive")
        parts.append(f"zero {s['zero_ok']}/{s['zero_ok'] + len(s['zero_bad'])}")
        if s.get("unknown"):
            parts.append(f"unknown {len(s['unknown'])}")
        if s.get("verdict_disagreements"):
            parts.append("VERDICT " + ",".join(s["verdict_disagreements"]))
    if st != "ok":
        why = rec.get("lint_error") or rec.get("measure_error") or rec.get("failure_reason") or ""
        parts.append(f"{st.upper()}: {why[:140]}")
    if rec.get("weights_identical") is False:
        parts.append("WEIGHTS DIFFER")
    return "  ".join(parts)


def _median(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def summary_lines(recs: list[dict], label: str, elapsed: Optional[float] = None) -> list[str]:
    n = len(recs)
    ok = [r for r in recs if r.get("lint_status") == "ok"]
    tracers = Counter(r.get("tracer") for r in ok)
    status = Counter(status_of(r) for r in recs)
    sev = Counter(f["severity"] for r in recs for f in r.get("findings") or [])
    with_findings = sum(1 for r in recs if r.get("findings"))
    scored = [r for r in recs if (r.get("score") or {}).get("layers")]
    scored = [r for r in recs if r.get("score")]
    degenerate = [r for r in scored if r["score"].get("degenerate")]
    collapsed = [r for r in scored if r["score"].get("collapsed")]
    scored = [r for r in scored if not r["score"].get("degenerate")
              and not r["score"].get("collapsed")]
    variants = sum(1 for r in recs if r["name"].endswith(HEAD_INIT))
    lines = [f"== {label}: {n} models"
             + (f" ({n - variants} + {variants} {HEAD_INIT} variants)" if variants else "")
             + f"; lint ok {len(ok)}/{n} "
             f"(tracer: {', '.join(f'{k} {v}' for k, v in tracers.most_common())}); "
             f"status: {', '.join(f'{k} {v}' for k, v in status.most_common())}"]
    by_code = Counter(f["code"] for r in recs for f in r.get("findings") or [])
    lines.append(f"   findings: {sum(sev.values())} on {with_findings} models "
                 f"(by severity: {', '.join(f'{k} {v}' for k, v in sev.most_common()) or 'none'}"
                 + (f"; by code: {', '.join(f'{k} {v}' for k, v in sorted(by_code.items()))}"
                    if by_code else "") + ")")

    def fig(key: str, absval: bool = False) -> tuple[Optional[float], str]:
        vals = [(abs(r['score'][key]) if absval else r['score'][key], r["name"]) for r in scored
                if r["score"].get(key) is not None]
        if not vals:
            return None, "-"
        worst = max(vals)
        return _median([v for v, _ in vals]), f"{worst[1]} {worst[0]:.3f}"

    if scored or degenerate or collapsed:
        lines.append(f"   scored {len(scored)}; left out: {len(degenerate)} with < {MIN_LAYERS} "
                     f"layers of measured non-zero gradient (zero-initialised head)"
                     + (f" [{', '.join(r['name'] for r in degenerate)}]" if degenerate else ""))
        lines.append(f"   ESTIMATE COLLAPSED to zero on most measured layers: {len(collapsed)}"
                     + (" [" + ", ".join(
                         f"{r['name']} {len(r['score']['zero_bad'])}/"
                         f"{r['score']['measured_layers']}" for r in collapsed) + "]"
                        if collapsed else ""))
    if scored:
        med, w_med = fig("median_error")
        wst, w_wst = fig("worst_error")
        spr, w_spr = fig("spread_error", absval=True)
        base, _ = fig("baseline")
        spreads = [abs(r["score"]["spread_error"]) for r in scored
                   if r["score"].get("spread_error") is not None]
        lines.append(f"   median error (median over models) {_f(med)} "
                     f"[worst: {w_med}]  (know-nothing baseline {_f(base)})")
        nmed, w_nmed = fig("noise_median")
        nwst, _ = fig("noise_worst")
        nspr, w_nspr = fig("spread_noise", absval=True)
        lines.append(f"   worst-layer error: median {_f(wst)} [worst: {w_wst}]")
        lines.append(f"   probe noise (2nd measurement, other seeds): median {_f(nmed)} "
                     f"[worst: {w_nmed}], worst-layer {_f(nwst)}, |spread| {_f(nspr)} "
                     f"[worst: {w_nspr}]")
        lines.append(f"   |spread error|: median {_f(spr)} [worst: {w_spr}]; "
                     f"> 0.3: {sum(s > 0.3 for s in spreads)}, > 0.5: {sum(s > 0.5 for s in spreads)}"
                     f", > 1: {sum(s > 1 for s in spreads)} of {len(spreads)}")
        zs = scored + collapsed
        zb = sum(len(r["score"]["zero_bad"]) for r in zs)
        zok = sum(r["score"]["zero_ok"] for r in zs)
        unk = sum(len(r["score"]["unknown"]) for r in zs)
        lines.append(f"   zero-gradient layers: {zok} agree, {zb} disagree "
                     f"(in {sum(1 for r in zs if r['score']['zero_bad'])} models); "
                     f"layers without a prediction: {unk}")
    dis = [(r["name"], c, r["score"]) for r in scored + collapsed
           for c in r["score"]["verdict_disagreements"]]
    lines.append(f"   verdict disagreements: {len(dis)}" + (": " + "; ".join(
        f"{n} {c} (archlint {'fires' if s['verdicts'][c]['archlint'] else 'silent'}, measured "
        f"{_f(s.get('vanishing_meas' if c == 'AL105' else 'exploding_meas'), '.2f', True)} dec)"
        for n, c, s in dis) if dis else ""))
    t_lint = sum(r.get("lint_s") or 0 for r in recs)
    t_total = sum(r.get("wall_s") or 0 for r in recs)
    lines.append(f"   time: lint {t_lint:.0f}s, per model {t_total:.0f}s in all"
                 + (f", wall {elapsed:.0f}s" if elapsed is not None else ""))
    return lines


def findings_left_lines(recs: list[dict]) -> list[str]:
    """Every finding left on these architectures, all known to train (issue 9's bars: every
    model analysed, no error-severity finding, no AL105/AL106, every other warning one to
    defend to the model's authors). One line per finding, grouped by model."""
    found = [(r, f) for r in recs for f in r.get("findings") or []]
    sev = Counter(f["severity"] for _, f in found)
    verdicts = [(r, f) for r, f in found if f["code"] in ("AL105", "AL106")]
    not_ok = [r for r in recs if status_of(r) not in ("ok", "measure-error")]
    lines = [f"== findings left on architectures known to train: {len(found)} on "
             f"{len({id(r) for r, _ in found})} of {len(recs)} models "
             f"({', '.join(f'{k} {v}' for k, v in sev.most_common()) or 'none'})",
             f"   bars: analysed {len(recs) - len(not_ok)}/{len(recs)}"
             + (f" [not: {', '.join(r['name'] for r in not_ok)}]" if not_ok else "")
             + f"; error-severity findings {sev.get('error', 0)}; AL105/AL106 {len(verdicts)}"
             + f"; other warnings {len(found) - len(verdicts) - sev.get('error', 0)}"]
    for r, f in found:
        lines.append(f"   [{r['library']}] {r['name']}: {f['code']} {f['severity']} at "
                     f"{f.get('module') or '-'}: {' '.join((f['message'] or '').split())[:240]}")
    return lines


def run_header(argv: list[str], versions: dict[str, str], started: Optional[float] = None
               ) -> str:
    """The first line of a results file: the command, date, versions and the git commit of the
    archlint code that ran."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    vers = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "archlint")
    load = ""
    try:
        load = f"; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        pass
    return (f"# python benchmarks/zoo_libraries.py {' '.join(argv)}  ({when}; archlint "
            f"{versions.get('archlint', '?')} at {archlint_commit()}; {vers}{load})")


def archlint_commit() -> str:
    """The git commit of the archlint package this run imports (``+dirty`` when its files
    differ from it), found without importing it."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("archlint")
    if spec is None or not spec.origin:
        return "?"
    where = str(Path(spec.origin).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


def _p90(vals: list[float]) -> float:
    a = sorted(abs(v) for v in vals)
    return a[int(0.9 * (len(a) - 1))]


def _rank(groups: dict) -> list:
    return sorted(((k, v) for k, v in groups.items() if len(v) >= 5), key=lambda kv: -_p90(kv[1]))


def _resid_stats(vals: list[float]) -> str:
    a = [abs(v) for v in vals]
    return (f"n={len(vals):5d} med|r| {statistics.median(a):.3f} p90 {_p90(vals):.3f} "
            f">0.5 {sum(x > 0.5 for x in a) / len(a):4.0%} signed {statistics.median(vals):+.3f}")


def detail_lines(recs: list[dict], top: int = 15) -> list[str]:
    """The breakdowns the estimator work needs: failures by cause, findings by code, unknown ops,
    the worst models and their worst layers, residuals by layer type."""
    L: list[str] = []
    L.append("== failures")
    for r in recs:
        st = status_of(r)
        if st != "ok":
            why = (r.get("error") or r.get("lint_error") or r.get("measure_error")
                   or r.get("failure_reason") or "")
            L.append(f"   {st:14s} [{r['library']}] {r['name']}: {why[:300]}")
    L.append("== findings by code")
    by_code = defaultdict(list)
    for r in recs:
        for f in r.get("findings") or []:
            by_code[f["code"]].append((r, f))
    for code in sorted(by_code):
        L.append(f"  {code}: {len(by_code[code])} findings on "
                 f"{len({id(r) for r, _ in by_code[code]})} models")
        for r, f in by_code[code]:
            L.append(f"   [{r['library']}] {r['name']} ({f['severity']}, {f['module']}): "
                     f"{f['message'][:400]}")
    L.append("== ops without a formula (models, occurrences)")
    ops_models: Counter = Counter()
    ops_count: Counter = Counter()
    for r in recs:
        for op, k in (r.get("unknown_ops") or {}).items():
            ops_models[op] += 1
            ops_count[op] += k
    for op, k in ops_models.most_common():
        L.append(f"   {op}: {k} models, {ops_count[op]} occurrences")
    other_notes = Counter()
    for r in recs:
        for note in r.get("notes") or []:
            if not _UNKNOWN_OPS.search(note):
                other_notes[re.sub(r"\d+", "N", note)[:160]] += 1
    if other_notes:
        L.append("== other notes")
        for note, k in other_notes.most_common():
            L.append(f"   {k:3d} x {note}")
    scored = [r for r in recs if (r.get("score") or {}).get("layers")
              and not r["score"].get("degenerate") and not r["score"].get("collapsed")]
    for key, label in (("median_error", "median error"), ("worst_error", "worst-layer error"),
                       ("spread_error", "|spread error|")):
        rows = sorted((r for r in scored if r["score"].get(key) is not None),
                      key=lambda r: -abs(r["score"][key]))[:top]
        L.append(f"== worst {len(rows)} by {label}")
        for r in rows:
            s = r["score"]
            L.append(f"   [{r['library']}] {r['name']:40s} med {_f(s.get('median_error'))} "
                     f"worst {_f(s.get('worst_error'), '.2f')} ({s.get('worst_layer')} "
                     f"{s.get('worst_type')}) spread {_f(s.get('spread_error'), '.2f', True)} "
                     f"(pred {_f(s.get('vanishing_pred'), '.2f', True)}, meas "
                     f"{_f(s.get('vanishing_meas'), '.2f', True)}) layers {s['layers']} noise "
                     f"{_f(s.get('noise_median'))}/{_f(s.get('noise_worst'), '.2f')}/"
                     f"{_f(s.get('spread_noise'), '.2f', True)}")
    L.append(f"== top residual layers of the {top} worst models by median error")
    worst_models = sorted(scored, key=lambda r: -r["score"]["median_error"])[:top]
    for r in worst_models:
        res = sorted(r["score"]["residuals"], key=lambda x: -abs(x["resid"]))[:6]
        L.append(f"   [{r['library']}] {r['name']}: " + "; ".join(
            f"{x['module']} ({x['type']}) {x['resid']:+.2f}" for x in res))
    L.append("== residual by layer type over all scored models (n >= 5; |resid| median, p90, "
             "share > 0.5; signed median), largest p90 first")
    by_type = defaultdict(list)
    for r in scored:
        for x in r["score"]["residuals"]:
            by_type[x["type"]].append(x["resid"])
    for t, vals in _rank(by_type):
        L.append(f"   {t:46s} {_resid_stats(vals)}")
    L.append("== residual by layer type and module-name leaf (same columns), largest p90 first")
    by_leaf = defaultdict(list)
    for r in scored:
        for x in r["score"]["residuals"]:
            leaf = re.sub(r"\d+", "N", x["module"].rsplit(".", 1)[-1]) or "<root>"
            by_leaf[(x["type"], leaf)].append(x["resid"])
    for (t, leaf), vals in _rank(by_leaf)[:40]:
        L.append(f"   {t + ' .' + leaf:46s} {_resid_stats(vals)}")
    L.append("== zero-gradient disagreements, per model (layer types; first layers)")
    for r in recs:
        if not r.get("score") or r["score"].get("degenerate") or not r["score"]["zero_bad"]:
            continue
        for kind in ("predicted zero, measured non-zero", "predicted non-zero, measured zero"):
            zs = [z for z in r["score"]["zero_bad"] if z["kind"] == kind]
            if not zs:
                continue
            types = Counter(z["type"] for z in zs)
            flips = sum(1 for z in zs if (z.get("meas2") or 0) > 0) if kind.endswith("measured zero") \
                else None
            L.append(f"   [{r['library']}] {r['name']}: {len(zs)} {kind}"
                     + (f" ({flips} non-zero in the 2nd probe)" if flips else "")
                     + f" [{', '.join(f'{t} {k}' for t, k in types.most_common(4))}; "
                     + ", ".join(z["module"] for z in zs[:4]) + (" ..." if len(zs) > 4 else "")
                     + "]")
    return L


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _select(names: list[str], library: str, sample: bool, filters: list[str]) -> list[str]:
    if sample:
        names = [n for n in SAMPLE[library] if n in names]
    if filters:
        names = [n for n in names if any(f in n for f in filters)]
    return names


def run(args: argparse.Namespace) -> list[dict]:
    log_path = args.worker_log or os.path.join(tempfile.gettempdir(),
                                               f"zoo_libraries_worker_{os.getpid()}.log")
    print(f"(worker output: {log_path})", flush=True)
    worker = Worker(log_path)
    recs: list[dict] = []
    libraries = args.library or list(LIBRARIES)
    t_start = time.perf_counter()
    try:
        for library in libraries:
            t_lib = time.perf_counter()
            kind, payload, _ = worker.ask(("list", library), timeout=300)
            if kind != "list":
                print(f"== {library}: skipped, does not import ({payload})", flush=True)
                continue
            names = _select(payload, library, args.sample, args.filter or [])
            lib_recs = []
            queue = list(names)
            while queue:
                name = queue.pop(0)
                t0 = time.perf_counter()
                kind, payload, partial = worker.ask(("run", library, name), timeout=args.timeout)
                if kind == "done":
                    rec = payload
                else:
                    rec = dict(partial or {"library": library, "name": name, "build_ok": False})
                    rec["failure"] = kind
                    stage = rec.get("stage", "start")
                    rec["failure_reason"] = (f"{kind} during {stage} after "
                                             f"{time.perf_counter() - t0:.0f}s"
                                             + (f": {payload}" if payload else ""))
                rec["wall_s"] = round(time.perf_counter() - t0, 2)
                if rec.get("pred") is not None and rec.get("meas") is not None:
                    rec["score"] = score(rec)
                print(model_line(rec), flush=True)
                lib_recs.append(rec)
                if ((rec.get("score") or {}).get("degenerate") and rec.get("zero_layers")
                        and not name.endswith(HEAD_INIT)):
                    queue.insert(0, name + HEAD_INIT)  # the same model with a live head
                if kind == "done" and (rec.get("rss_mb") or 0) > args.max_rss_mb:
                    worker.stop()  # start afresh: memory is not given back to the OS
            recs.extend(lib_recs)
            if lib_recs:
                for line in summary_lines(lib_recs, library, time.perf_counter() - t_lib):
                    print(line, flush=True)
    finally:
        worker.stop()
    elapsed = time.perf_counter() - t_start
    if len({r["library"] for r in recs}) > 1:
        for line in summary_lines(recs, "all libraries", elapsed):
            print(line)
    else:
        print(f"total wall time {elapsed:.0f}s")
    return recs


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", action="append", choices=LIBRARIES,
                    help="library to run (repeatable; default: all)")
    ap.add_argument("--sample", action="store_true", help="a small, fast subset (CI)")
    ap.add_argument("--filter", action="append", help="only models whose name contains this")
    ap.add_argument("--json", help="write every per-model record here")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model (600)")
    ap.add_argument("--max-rss-mb", type=float, default=6000.0,
                    help="restart the worker when its memory exceeds this (6000)")
    ap.add_argument("--details", action="store_true",
                    help="also print failures, findings, notes, worst models and layer types")
    ap.add_argument("--from-json", help="summarise a saved run instead of running")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when archlint errors or crashes on a model")
    ap.add_argument("--worker-log", help="where the worker's stdout/stderr go")
    args = ap.parse_args(argv)

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        recs = saved["models"]
        if (saved.get("meta") or {}).get("header"):
            print(saved["meta"]["header"])
        for r in recs:
            if r.get("pred") is not None and r.get("meas") is not None:
                r["score"] = score(r)
        for lib in LIBRARIES:
            sub = [r for r in recs if r["library"] == lib]
            if sub:
                print("\n".join(summary_lines(sub, lib)))
        print("\n".join(summary_lines(recs, "all libraries")))
    else:
        header = run_header(sys.argv[1:] if argv is None else argv, _versions())
        print(header, flush=True)
        recs = run(args)
        if args.json:
            meta = {"argv": sys.argv[1:], "versions": _versions(), "timeout": args.timeout,
                    "header": header}
            Path(args.json).write_text(json.dumps({"meta": meta, "models": recs}, indent=1))
            print(f"wrote {args.json}")
    if args.details:
        print("\n".join(detail_lines(recs)))
    print("\n".join(findings_left_lines(recs)))
    if args.strict and any(status_of(r) in ("lint-crash", "lint-error") for r in recs):
        return 1
    return 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "torchvision", "timm", "transformers", "archlint"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
