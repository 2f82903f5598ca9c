"""M-CLIP text towers (models/mclip.py): folders laid out as M-CLIP publishes them on Hugging Face
(config.json with modelBase/transformerDimensions/numDims, `transformer.*` and
`LinearTransformation.*` weights, the tokenizer), with random weights of M-CLIP's architecture,
load through the project's loader and embed exactly as M-CLIP's own forward does: encoder, mean
over the attention mask, projection. Local folders, Beam filesystem folders (http on 127.0.0.1)
and both weight formats."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel, BertConfig, XLMRobertaConfig

from crawl2clip.models.mclip import MClipSpec, load_mclip, read_config, trained_for
from crawl2clip.models.tiny_multilingual import train_tokenizer
from crawl2clip.transforms import httpfs  # noqa: F401  (registers http:// with Beam's FileSystems)
from tests.http_server import serve_directory
from tests.multilingual_captions import CAPTIONS

TEXTS = [text for _, text in CAPTIONS]
# M-CLIP/XLM-Roberta-Large-Vit-B-32's encoder is xlm-roberta-large (1024-d, 24 layers, 250,002
# tokens); the loader builds whatever encoder modelBase's config names, so small ones test it.
SMALL_XLMR = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                  max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def write_published_tower(folder, tokenizer, encoder_config, dims: int = 32, seed: int = 0,
                          weights: str = "pytorch_model.bin", name: str = "M-CLIP/test-tower",
                          extra_keys: dict | None = None):
    """An M-CLIP tower folder as published: the M-CLIP config, one checkpoint of every weight, the
    tokenizer; the encoder's config in its own folder named by modelBase (an absolute path here:
    no Hugging Face Hub). Returns the reference modules (encoder, projection)."""
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(encoder_config).eval()
    projection = torch.nn.Linear(encoder_config.hidden_size, dims)
    base = os.path.join(str(folder), "..", f"{os.path.basename(str(folder))}-base")
    encoder_config.save_pretrained(base)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_name_or_path": name, "architectures": ["MultilingualCLIP"], "model_type": "M-CLIP",
                   "modelBase": os.path.abspath(base), "transformerDimensions": encoder_config.hidden_size,
                   "numDims": dims, "torch_dtype": "float32", "transformers_version": "4.19.0"}, f)
    state = {f"transformer.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"LinearTransformation.{k}": v for k, v in projection.state_dict().items()}
    state |= extra_keys or {}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, weights))
    else:
        torch.save(state, os.path.join(folder, weights))
    tokenizer.save_pretrained(folder)
    return encoder, projection


@torch.inference_mode()
def mclip_forward(encoder, projection, tokenizer, texts: list[str]) -> np.ndarray:
    """M-CLIP's own forward (pt_multilingual_clip.MultilingualCLIP.forward), then unit length."""
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    embs = encoder(**tokens)[0]
    att = tokens["attention_mask"]
    embs = (embs * att.unsqueeze(2)).sum(dim=1) / att.sum(dim=1)[:, None]
    return torch.nn.functional.normalize(projection(embs), dim=-1).numpy()


def _xlmr(tokenizer, **overrides):
    return XLMRobertaConfig(vocab_size=len(tokenizer), **{**SMALL_XLMR, **overrides})


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_a_published_layout_xlm_r_tower_embeds_as_mclip_does(tmp_path, tokenizer, weights):
    folder = tmp_path / "tower"
    encoder, projection = write_published_tower(folder, tokenizer, _xlmr(tokenizer), weights=weights)
    tower = load_mclip(MClipSpec(str(folder), device="cpu"))
    assert tower.embed_dim == 32 and tower.describe()["model_base"].endswith("tower-base")
    got = tower.encode_texts(TEXTS)
    np.testing.assert_allclose(got, mclip_forward(encoder, projection, tokenizer, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # batches pad to their longest caption: a caption's embedding does not depend on its batch
    np.testing.assert_allclose(tower.encode_texts(TEXTS[:1]), got[:1], atol=1e-5)
    # tokenised ahead (the scoring stage): sorted by length into batches, each cut to its longest
    batches = tower.text_batches(TEXTS, 7)
    assert sorted(i for rows, _ in batches for i in rows) == list(range(len(TEXTS)))
    assert batches[0][1]["input_ids"].shape[1] < batches[-1][1]["input_ids"].shape[1]
    for rows, tokens in batches:
        np.testing.assert_allclose(tower.encode_tokens(tokens), got[rows], atol=1e-5)


def test_the_loader_is_not_tied_to_xlm_r(tmp_path, tokenizer):
    """LaBSE-based towers (M-CLIP/LABSE-Vit-L-14) are BERTs: the same loader builds them."""
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=80, max_position_embeddings=128, pad_token_id=1)
    encoder, projection = write_published_tower(tmp_path / "labse-like", tokenizer, config, dims=24)
    tower = load_mclip(MClipSpec(str(tmp_path / "labse-like"), device="cpu"))
    np.testing.assert_allclose(tower.encode_texts(TEXTS[:20]), mclip_forward(encoder, projection, tokenizer, TEXTS[:20]),
                               atol=1e-5)


def test_a_tower_on_a_beam_filesystem_loads_through_a_local_copy(tmp_path, tokenizer):
    encoder, projection = write_published_tower(tmp_path / "site" / "tower", tokenizer, _xlmr(tokenizer), seed=3)
    with serve_directory(str(tmp_path / "site")) as server:
        url = f"{server.url}/tower"
        assert read_config(url)["numDims"] == 32
        tower = load_mclip(MClipSpec(url, device="cpu"))
    np.testing.assert_allclose(tower.encode_texts(TEXTS[:8]), mclip_forward(encoder, projection, tokenizer, TEXTS[:8]),
                               atol=1e-5)


def test_older_checkpoints_with_position_ids_load_and_broken_ones_are_refused(tmp_path, tokenizer):
    config = _xlmr(tokenizer)
    old = {"transformer.embeddings.position_ids": torch.arange(config.max_position_embeddings)[None]}
    write_published_tower(tmp_path / "old", tokenizer, config, extra_keys=old)  # transformers 4.19 saved this buffer
    assert load_mclip(MClipSpec(str(tmp_path / "old"), device="cpu")).encode_texts(["ein Hund"]).shape == (1, 32)

    write_published_tower(tmp_path / "wrong", tokenizer, config)
    config.num_hidden_layers = 3  # the architecture named no longer fits the weights
    config.save_pretrained(str(tmp_path / "wrong-base"))
    with pytest.raises(ValueError, match="does not fit"):
        load_mclip(MClipSpec(str(tmp_path / "wrong"), device="cpu"))

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    with pytest.raises(ValueError, match="not an M-CLIP text tower"):
        read_config(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="cannot read its config.json"):
        read_config(str(tmp_path / "missing"))


def test_published_towers_are_known_by_the_clip_they_were_trained_for():
    assert trained_for("M-CLIP/XLM-Roberta-Large-Vit-B-32", {}) == {"model": "ViT-B-32", "pretrained": "openai"}
    # a local copy still says where it came from
    assert trained_for("/models/mclip", {"_name_or_path": "M-CLIP/XLM-Roberta-Large-Vit-L-14"})["model"] == "ViT-L-14"
    assert trained_for("/models/own", {"clip_model": {"model": "crawl2clip-tiny"}}) == {"model": "crawl2clip-tiny"}
    assert trained_for("/models/unknown", {}) is None


@pytest.mark.skipif(not os.environ.get("CRAWL2CLIP_SLOW_TESTS"),
                    reason="XLM-R large is 560M parameters: about a minute and 8 GB of memory; "
                           "set CRAWL2CLIP_SLOW_TESTS=1")
def test_the_exact_xlm_roberta_large_vit_b_32_architecture(tmp_path, tokenizer):
    """M-CLIP/XLM-Roberta-Large-Vit-B-32's exact dimensions: xlm-roberta-large into 512-d."""
    encoder, projection = write_published_tower(tmp_path / "large", tokenizer, XLMRobertaConfig(**XLMR_LARGE), dims=512)
    tower = load_mclip(MClipSpec(str(tmp_path / "large"), device="cpu"))
    np.testing.assert_allclose(tower.encode_texts(TEXTS[:4]), mclip_forward(encoder, projection, tokenizer, TEXTS[:4]),
                               atol=1e-4)


def test_a_hugging_face_id_loads_from_the_local_cache_without_the_hub(tmp_path, tokenizer, monkeypatch):
    """The default --multi-text-model is a Hugging Face id: a copy in the user's cache is used as
    it is (no network here), laid out as huggingface_hub stores repositories."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--M-CLIP--XLM-Roberta-Large-Vit-B-32"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    encoder, projection = write_published_tower(snapshot, tokenizer, _xlmr(tokenizer), dims=32, seed=9)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert read_config("M-CLIP/XLM-Roberta-Large-Vit-B-32")["numDims"] == 32
    tower = load_mclip(MClipSpec("M-CLIP/XLM-Roberta-Large-Vit-B-32", device="cpu"))
    assert tower.trained_for == {"model": "ViT-B-32", "pretrained": "openai"}
    np.testing.assert_allclose(tower.encode_texts(TEXTS[:8]), mclip_forward(encoder, projection, tokenizer, TEXTS[:8]),
                               atol=1e-5)
