"""Opt-in: architectures known to train must get no warning from archlint.

Runs only where torchvision, timm or transformers import (they are optional extras; CI's core
suite skips this file). To run it:

    python -m venv /tmp/venv-models && . /tmp/venv-models/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 timm transformers && pip install -e ".[test]"
    python -m pytest -q tests/test_known_good_models.py
"""

from __future__ import annotations

import importlib

import pytest

from helpers import lint_model

pytestmark = pytest.mark.optional


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a torchvision that does not match torch
        return False
    return True


def _lint(build, spec):
    """All rules, through the public API (which builds the model with its sites recorded)."""
    result = lint_model(build, spec)
    assert result.status == "ok", result.error
    return result


def _image(size: int = 224) -> dict:
    return {"shape": [2, 3, size, size]}


def _ids(vocab: int = 1000, length: int = 32) -> dict:
    return {"shape": [2, length], "dtype": "int64", "high": vocab}


TORCHVISION = ["resnet18", "resnet50", "vgg16", "vgg16_bn", "vgg19", "mobilenet_v3_small",
               "densenet121", "efficientnet_b0", "vit_b_16", "convnext_tiny", "regnet_x_400mf",
               "squeezenet1_0", "alexnet", "swin_t", "shufflenet_v2_x1_0", "mnasnet0_5"]


@pytest.mark.skipif(not _have("torchvision"), reason="torchvision not installed (optional)")
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_are_clean(name):
    import torchvision.models as tvm

    result = _lint(lambda: getattr(tvm, name)(weights=None), _image())
    assert [f.code for f in result.findings] == [], [f.message for f in result.findings]
    assert any(layer.grad_rms for layer in result.layers)


TIMM = ["resnet50", "vit_tiny_patch16_224", "convnext_atto", "efficientnet_b0",
        "mixer_s16_224", "nfnet_l0", "mobilenetv3_small_100", "densenet121",
        "poolformer_s12", "levit_128s", "regnety_002", "resnetv2_50"]


@pytest.mark.skipif(not _have("timm"), reason="timm not installed (optional)")
@pytest.mark.parametrize("name", TIMM)
def test_timm_models_are_clean(name):
    import timm

    size = timm.create_model(name, pretrained=False).default_cfg.get("input_size",
                                                                       (3, 224, 224))
    result = _lint(lambda: timm.create_model(name, pretrained=False), {"shape": [2, *size]})
    assert [f.code for f in result.findings] == [], [f.message for f in result.findings]


#: Identity-at-init designs and fixed filters the library zoo once reported (AL103/AL104):
#: blur buffers, a conditional convolution's expert bank, std-0.02 layers inside residual
#: branches, talking heads, gMLP's constant gate, GRN, ConvMixer. The structural rules must stay
#: silent; the gradient verdicts (AL105/AL106) are the estimate's and judged in the zoo.
TIMM_IDENTITY_AT_INIT = ["resnetblur18", "densenetblur121d", "tresnet_m",
                         "efficientnet_cc_b0_4e", "starnet_s050", "convmixer_768_32",
                         "cait_xxs24_224", "tnt_s_patch16_224", "mobilevit_xxs",
                         "swiftformer_xs", "convnextv2_atto", "gmlp_ti16_224"]
STRUCTURAL = ["AL101", "AL102", "AL103", "AL104", "AL107"]


@pytest.mark.skipif(not _have("timm"), reason="timm not installed (optional)")
@pytest.mark.parametrize("name", TIMM_IDENTITY_AT_INIT)
def test_timm_identity_at_init_designs_get_no_structural_finding(name):
    import timm

    def build():
        try:  # models with position embeddings are built for the input size
            return timm.create_model(name, pretrained=False, img_size=64)
        except TypeError:
            return timm.create_model(name, pretrained=False)

    result = lint_model(build, {"shape": [4, 3, 64, 64]}, select=STRUCTURAL)
    assert result.status == "ok", result.error
    assert [f.code for f in result.findings] == [], [f.message for f in result.findings]


def _hf_cases():
    import transformers as T

    return {
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
            n_layer=12, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=0,
            eos_token_id=0)), _ids()),
        "bert": (lambda: T.BertForMaskedLM(T.BertConfig(
            num_hidden_layers=12, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            vocab_size=1000)), _ids()),
        "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_hidden_layers=12, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1000)), _ids()),
        "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(
            num_layers=6, d_model=64, d_kv=16, num_heads=4, d_ff=128, vocab_size=1000)),
               {"input_ids": _ids(), "decoder_input_ids": _ids(length=8)}),
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
            num_hidden_layers=12, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=4)), {"shape": [2, 3, 32, 32]}),
    }


@pytest.mark.skipif(not _have("transformers"), reason="transformers not installed (optional)")
@pytest.mark.parametrize("name", ["gemma", "swin"])
def test_transformers_identity_at_init_designs_get_no_structural_finding(name):
    """Gemma's RMSNorm computes x * (1 + weight) from a zero weight; Swin's q/k/v projections
    (std 0.02, width 16) sit inside residual branches."""
    import transformers as T

    if name == "gemma":
        build = lambda: T.GemmaForCausalLM(T.GemmaConfig(  # noqa: E731
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=128, vocab_size=1000))
        spec = _ids()
    else:
        build = lambda: T.SwinForImageClassification(T.SwinConfig(  # noqa: E731
            image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=10))
        spec = {"shape": [2, 3, 32, 32]}
    result = lint_model(build, spec, select=STRUCTURAL)
    assert result.status == "ok", result.error
    assert [f.code for f in result.findings] == [], [f.message for f in result.findings]


@pytest.mark.skipif(not _have("transformers"), reason="transformers not installed (optional)")
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "t5", "vit"])
def test_transformers_models_are_clean(name):
    build, spec = _hf_cases()[name]
    result = _lint(build, spec)
    assert result.tracer == "exec"  # Hugging Face models defeat torch.fx: the fallback works
    assert [f.code for f in result.findings] == [], [f.message for f in result.findings]
    assert any(layer.grad_rms for layer in result.layers)
