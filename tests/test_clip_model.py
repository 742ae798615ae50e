"""CLIP modules: OpenAI layout and precision, text truncation, prompt hooks, attention."""
from __future__ import annotations

import math
from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn

from clip import tokenize
from clip.model import CLIP, MultiheadAttention, build_model
from clip.tiny import TINY_CONFIGS, tiny_state_dict

VIT, RN = "tiny-ViT-B/16", "tiny-RN50"


@pytest.fixture(scope="module")
def state_dicts() -> Dict[str, Dict[str, Tensor]]:
    return {name: tiny_state_dict(name) for name in (VIT, RN)}


@pytest.fixture
def vit(state_dicts) -> CLIP:
    return build_model(state_dicts[VIT]).float()


@pytest.fixture
def rn(state_dicts) -> CLIP:
    return build_model(state_dicts[RN]).float()


def _images(n: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


PROMPTS = ["a photo of a dog.", "X X X X X X X X X X X X X X X X a very long class name with many words.", "cat"]


def _capture_inputs(blocks: nn.Sequential) -> List[List[Tensor]]:
    """Record the hidden states entering every block (one list per block)."""
    seen: List[List[Tensor]] = [[] for _ in blocks]
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda _m, args, i=i: seen[i].append(args[0].detach().clone()))
    return seen


# --- architecture, keys, precision -------------------------------------------------------------

def _expected_keys(config: dict) -> set:
    """OpenAI's state-dict keys for a configuration, written out from the documented layout."""
    keys = {"positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
            "ln_final.weight", "ln_final.bias"}
    block = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]
    keys |= {f"transformer.resblocks.{i}.{k}" for i in range(config["transformer_layers"]) for k in block}
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    if config["vision_patch_size"] is not None:
        keys |= {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                 "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"}
        keys |= {f"visual.transformer.resblocks.{i}.{k}" for i in range(config["vision_layers"]) for k in block}
    else:
        for j in (1, 2, 3):
            keys |= {f"visual.conv{j}.weight"} | {f"visual.bn{j}.{b}" for b in bn}
        for stage, blocks in enumerate(config["vision_layers"], start=1):
            for i in range(blocks):
                prefix = f"visual.layer{stage}.{i}"
                for j in (1, 2, 3):
                    keys |= {f"{prefix}.conv{j}.weight"} | {f"{prefix}.bn{j}.{b}" for b in bn}
                if i == 0:
                    keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{b}" for b in bn}
        keys.add("visual.attnpool.positional_embedding")
        keys |= {f"visual.attnpool.{p}_proj.{w}" for p in "qkvc" for w in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("name", [VIT, RN])
def test_state_dict_keys_are_openais(name, state_dicts):
    assert set(state_dicts[name]) == _expected_keys(TINY_CONFIGS[name])


def test_build_model_infers_vit(state_dicts):
    model = build_model(state_dicts[VIT])
    assert model.is_vit and not model.training
    v = model.visual
    assert (v.conv1.out_channels, v.conv1.kernel_size, v.input_resolution) == (128, (16, 16), 224)
    assert len(v.transformer.resblocks) == 12 and v.transformer.resblocks[0].attn.num_heads == 2  # ViT-B's depth
    assert model.transformer.width == 64 and model.transformer.layers == 12
    assert model.transformer.resblocks[0].attn.num_heads == 1
    assert (model.context_length, model.vocab_size, model.input_resolution) == (77, 49408, 224)
    assert model.text_projection.shape == (64, 64)


def test_build_model_infers_resnet(state_dicts):
    model = build_model(state_dicts[RN])
    assert not model.is_vit and not model.training
    v = model.visual
    assert [len(getattr(v, f"layer{b}")) for b in (1, 2, 3, 4)] == [3, 4, 6, 3]  # RN50's stages
    assert v.conv3.out_channels == 16 and v.input_resolution == 224
    assert v.attnpool.num_heads == 8 and v.attnpool.positional_embedding.shape == (50, 512)
    assert v.attnpool.c_proj.out_features == 64


def test_build_model_leaves_input_alone_and_drops_archive_metadata(state_dicts):
    sd = dict(state_dicts[VIT])
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    keys = set(sd)
    model = build_model(sd)
    assert set(sd) == keys
    assert set(model.state_dict()) == keys - {"input_resolution", "context_length", "vocab_size"}


@pytest.mark.parametrize("name", [VIT, RN])
def test_fp16_storage_like_openai(name, state_dicts):
    model = build_model(state_dicts[name])
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert model.dtype == torch.float16
    half = [k for k in dtypes if k.endswith(("conv1.weight", "conv2.weight", "conv3.weight", "in_proj_weight",
                                              "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight",
                                              "c_proj.bias", "q_proj.weight", "downsample.0.weight"))]
    half += ["text_projection"] + (["visual.proj"] if name == VIT else [])
    full = [k for k in dtypes if ".ln_" in k or k.startswith("ln_final") or ".bn" in k or "downsample.1" in k]
    full += ["token_embedding.weight", "positional_embedding", "logit_scale"]
    full += ["visual.class_embedding", "visual.positional_embedding"] if name == VIT \
        else ["visual.attnpool.positional_embedding"]
    assert len(half) > 10 and len(full) > 10
    assert {k: dtypes[k] for k in half if dtypes[k] != torch.float16} == {}
    assert {k: dtypes[k] for k in full if dtypes[k] not in (torch.float32, torch.int64)} == {}
    model.float()
    assert model.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_tiny_logit_scale_is_trained_value(state_dicts):
    assert state_dicts[VIT]["logit_scale"].item() == pytest.approx(math.log(100.0))


def test_forward_returns_scaled_cosine_logits(vit):
    text = tokenize(PROMPTS)
    with torch.no_grad():
        per_image, per_text = vit(_images(), text)
        img = vit.encode_image(_images())
        txt = vit.encode_text(text)
    cos = nn.functional.normalize(img, dim=-1) @ nn.functional.normalize(txt, dim=-1).t()
    assert per_image.shape == (2, 3) and torch.equal(per_text, per_image.t())
    torch.testing.assert_close(per_image, 100.0 * cos, rtol=1e-4, atol=1e-4)


def test_attention_init_draws_like_torch_multihead_attention():
    """Same RNG consumption and values as nn.MultiheadAttention, so seeded CLIP construction matches."""
    torch.manual_seed(3)
    ours = MultiheadAttention(32, 4)
    after_ours = torch.rand(3)
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(32, 4)
    after_ref = torch.rand(3)
    assert torch.equal(after_ours, after_ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def _openai_order_state_dict(config: dict, seed: int) -> Dict[str, Tensor]:
    """Replay OpenAI's constructor with stock torch modules: which tensors are created in which
    order (each consuming the RNG as torch's own init does), then ``initialize_parameters``."""
    torch.manual_seed(seed)
    sd: Dict[str, Tensor] = {}
    bn_state = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def module(prefix: str, m: nn.Module) -> nn.Module:
        sd.update({f"{prefix}.{k}": v for k, v in m.state_dict().items()})
        return m

    def conv(prefix: str, cin: int, cout: int, k: int, **kw) -> None:
        module(prefix, nn.Conv2d(cin, cout, k, bias=False, **kw))

    def bn(prefix: str, c: int) -> None:
        module(prefix, nn.BatchNorm2d(c))
        assert all(f"{prefix}.{b}" in sd for b in bn_state)

    def blocks(prefix: str, width: int, layers: int, heads: int) -> None:
        for i in range(layers):
            module(f"{prefix}.{i}.attn", nn.MultiheadAttention(width, heads))
            module(f"{prefix}.{i}.ln_1", nn.LayerNorm(width))
            module(f"{prefix}.{i}.mlp.c_fc", nn.Linear(width, 4 * width))
            module(f"{prefix}.{i}.mlp.c_proj", nn.Linear(4 * width, width))
            module(f"{prefix}.{i}.ln_2", nn.LayerNorm(width))

    c, w, embed = config, config["vision_width"], config["embed_dim"]
    if c["vision_patch_size"] is not None:
        conv("visual.conv1", 3, w, c["vision_patch_size"], stride=c["vision_patch_size"])
        sd["visual.class_embedding"] = w ** -0.5 * torch.randn(w)
        grid = c["image_resolution"] // c["vision_patch_size"]
        sd["visual.positional_embedding"] = w ** -0.5 * torch.randn(grid ** 2 + 1, w)
        module("visual.ln_pre", nn.LayerNorm(w))
        blocks("visual.transformer.resblocks", w, c["vision_layers"], w // 64)
        module("visual.ln_post", nn.LayerNorm(w))
        sd["visual.proj"] = w ** -0.5 * torch.randn(w, embed)
    else:
        for j, (cin, cout) in enumerate([(3, w // 2), (w // 2, w // 2), (w // 2, w)], start=1):
            conv(f"visual.conv{j}", cin, cout, 3, stride=2 if j == 1 else 1, padding=1)
            bn(f"visual.bn{j}", cout)
        inplanes = w
        for stage, count in enumerate(c["vision_layers"], start=1):
            planes = w * 2 ** (stage - 1)
            for i in range(count):
                p = f"visual.layer{stage}.{i}"
                conv(f"{p}.conv1", inplanes, planes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3, padding=1)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes, planes * 4, 1)
                bn(f"{p}.bn3", planes * 4)
                if i == 0:
                    conv(f"{p}.downsample.0", inplanes, planes * 4, 1)
                    bn(f"{p}.downsample.1", planes * 4)
                inplanes = planes * 4
        pool_dim = 32 * w
        sd["visual.attnpool.positional_embedding"] = torch.randn((c["image_resolution"] // 32) ** 2 + 1,
                                                                 pool_dim) / pool_dim ** 0.5
        for name in ("k", "q", "v"):
            module(f"visual.attnpool.{name}_proj", nn.Linear(pool_dim, pool_dim))
        module("visual.attnpool.c_proj", nn.Linear(pool_dim, embed))

    tw, tl = c["transformer_width"], c["transformer_layers"]
    blocks("transformer.resblocks", tw, tl, c["transformer_heads"])
    module("token_embedding", nn.Embedding(c["vocab_size"], tw))
    module("ln_final", nn.LayerNorm(tw))
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))

    # initialize_parameters
    sd["token_embedding.weight"] = torch.empty(c["vocab_size"], tw).normal_(std=0.02)
    sd["positional_embedding"] = torch.empty(c["context_length"], tw).normal_(std=0.01)
    if c["vision_patch_size"] is None:
        for name in ("q", "k", "v", "c"):
            key = f"visual.attnpool.{name}_proj.weight"
            sd[key] = torch.empty_like(sd[key]).normal_(std=pool_dim ** -0.5)
        for key in sd:
            if key.startswith("visual.layer") and key.endswith("bn3.weight"):
                sd[key] = torch.zeros_like(sd[key])
    for i in range(tl):
        p = f"transformer.resblocks.{i}"
        for key, std in ((f"{p}.attn.in_proj_weight", tw ** -0.5),
                         (f"{p}.attn.out_proj.weight", tw ** -0.5 * (2 * tl) ** -0.5),
                         (f"{p}.mlp.c_fc.weight", (2 * tw) ** -0.5),
                         (f"{p}.mlp.c_proj.weight", tw ** -0.5 * (2 * tl) ** -0.5)):
            sd[key] = torch.empty_like(sd[key]).normal_(std=std)
    sd["text_projection"] = torch.empty(tw, embed).normal_(std=tw ** -0.5)
    return sd


@pytest.mark.parametrize("name", [VIT, RN])
def test_seeded_construction_matches_openais_init_order(name):
    expected = _openai_order_state_dict(TINY_CONFIGS[name], seed=7)
    torch.manual_seed(7)
    actual = CLIP(**TINY_CONFIGS[name]).state_dict()
    assert set(actual) == set(expected)
    differing = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert differing == []


def test_seeded_construction_is_reproducible_and_leaves_rng_alone():
    before = torch.random.get_rng_state()
    a, b = tiny_state_dict(RN, seed=5), tiny_state_dict(RN, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = tiny_state_dict(RN, seed=6)
    assert not torch.equal(a["visual.attnpool.q_proj.weight"], c["visual.attnpool.q_proj.weight"])
    # OpenAI zero-initialises the last BN of every bottleneck.
    assert all(not a[k].any() for k in a if k.endswith("bn3.weight") and "layer" in k)


# --- attention ---------------------------------------------------------------------------------

def _reference_attention(attn: MultiheadAttention, x: Tensor, extra: Tensor = None, causal: bool = False) -> Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V written out; extra tokens are keys/values only."""
    batch, length, dim = x.shape
    heads, d = attn.num_heads, dim // attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    source = x if extra is None else torch.cat([x, extra.expand(batch, -1, -1)], dim=1)
    q = x @ w[:dim].t() + b[:dim]
    k = source @ w[dim:2 * dim].t() + b[dim:2 * dim]
    v = source @ w[2 * dim:].t() + b[2 * dim:]
    q, k, v = (t.reshape(batch, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    mask = torch.zeros(length, source.shape[1], dtype=x.dtype)
    if causal:
        mask[:, :length] = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    out = torch.softmax(scores + mask, dim=-1) @ v
    out = out.transpose(1, 2).reshape(batch, length, dim)
    return out @ attn.out_proj.weight.t() + attn.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_extra", [None, 3])
@pytest.mark.parametrize("batched_extra", [False, True])
def test_sdpa_attention_matches_reference(causal, n_extra, batched_extra):
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    extra = None
    if n_extra is not None:
        extra = torch.randn(2 if batched_extra else 1, n_extra, 32, dtype=torch.float64)
        if not batched_extra:
            extra = extra[0]
    out = attn(x, extra_kv=extra, causal=causal)
    ref = _reference_attention(attn, x, extra, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_multihead_attention(causal):
    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 9, 32)
    mask = torch.full((9, 9), float("-inf")).triu(1) if causal else None
    expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(ours(x, causal=causal), expected, rtol=1e-5, atol=1e-5)


def test_resnet_attention_pool_matches_reference(rn):
    """The mean token is the single query over [mean; pixels] + positional embedding."""
    pool = rn.visual.attnpool
    with torch.no_grad():
        for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            lin.bias.normal_(0, 0.1)
        fmap = torch.randn(2, 512, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional_embedding
        heads, d = pool.num_heads, 512 // pool.num_heads
        q = pool.q_proj(tokens[:, :1]).reshape(2, 1, heads, d).transpose(1, 2)
        k = pool.k_proj(tokens).reshape(2, 50, heads, d).transpose(1, 2)
        v = pool.v_proj(tokens).reshape(2, 50, heads, d).transpose(1, 2)
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
        expected = pool.c_proj(out.transpose(1, 2).reshape(2, 512))
        torch.testing.assert_close(pool(fmap), expected, rtol=1e-4, atol=1e-5)


# --- text: truncation and hooks ----------------------------------------------------------------

def test_truncated_text_equals_full(vit):
    text = tokenize(PROMPTS)
    eot = text.argmax(-1)
    assert len(set(eot.tolist())) == 3
    seen = _capture_inputs(vit.transformer.resblocks)
    with torch.no_grad():
        vit.truncate_text = False
        full = vit.encode_text(text)
        vit.truncate_text = True
        short = vit.encode_text(text)
    assert seen[0][0].shape[1] == 77 and seen[0][1].shape[1] == int(eot.max()) + 1
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


def test_encode_text_equals_embeddings_path(vit):
    text = tokenize(PROMPTS)
    with torch.no_grad():
        direct = vit.encode_text(text)
        embeddings = vit.token_embedding(text)
        hooked = vit.encode_text_embeddings(embeddings, text.argmax(-1), deep_prompts=[None, None],
                                            kv_prompts=[None, None])
    assert torch.equal(direct, hooked)


def test_empty_text_hooks_equal_plain(vit):
    text = tokenize(PROMPTS)
    emb = vit.token_embedding(text)
    with torch.no_grad():
        plain = vit.encode_text_embeddings(emb, text.argmax(-1))
        empty = vit.encode_text_embeddings(emb, text.argmax(-1), deep_prompts=[None, torch.zeros(0, 64)],
                                           kv_prompts=[torch.zeros(0, 64), torch.zeros(3, 0, 64)])
    assert torch.equal(plain, empty)


def _deep_text_model() -> CLIP:
    """A tiny CLIP with three text layers, so that a block after the last deep prompt exists."""
    config = dict(TINY_CONFIGS[VIT], transformer_layers=3, vision_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIP(**config).eval()


@pytest.mark.parametrize("per_sequence", [False, True])
def test_deep_text_prompts_replace_positions_one_to_n(per_sequence):
    model = _deep_text_model()
    text = tokenize(PROMPTS)
    emb, eot = model.token_embedding(text), text.argmax(-1)
    n = 4
    prompt = _randn(3, n, 64) if per_sequence else _randn(n, 64)
    seen = _capture_inputs(model.transformer.resblocks)
    outputs: List[Tensor] = []
    model.transformer.resblocks[1].register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().clone()))
    with torch.no_grad():
        base = model.encode_text_embeddings(emb, eot)
        deep = model.encode_text_embeddings(emb, eot, deep_prompts=[None, prompt])
    (base0, deep0), (base1, deep1), (_, deep2) = seen
    assert torch.equal(base0, deep0)  # entry 0 is None: block 0 input untouched
    assert torch.equal(deep1[:, 1:1 + n], prompt.expand(3, n, 64))
    assert torch.equal(deep1[:, :1], base1[:, :1]) and torch.equal(deep1[:, 1 + n:], base1[:, 1 + n:])
    # Block 2 has no entry: the slots carry block 1's outputs forward.
    assert torch.equal(deep2[:, 1:1 + n], outputs[1][:, 1:1 + n])
    assert not torch.allclose(base, deep)


def test_deep_text_prompts_survive_truncation():
    """Deep prompts longer than the shortest sequence keep their slots; truncation stays exact."""
    model = _deep_text_model()
    text = tokenize(["cat", "dog"])  # EOT at position 2
    emb, eot = model.token_embedding(text), text.argmax(-1)
    deep = [None, _randn(5, 64)]
    with torch.no_grad():
        short = model.encode_text_embeddings(emb, eot, deep_prompts=deep)
        model.truncate_text = False
        full = model.encode_text_embeddings(emb, eot, deep_prompts=deep)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


def test_kv_text_prompts_change_output_and_reach_the_first_query(vit):
    text = tokenize(PROMPTS)
    emb = vit.token_embedding(text)
    sos = torch.zeros(3, dtype=torch.long)  # read the start token: it only sees itself and the K/V prompts
    kv = [_randn(5, 64), _randn(3, 2, 64, seed=2)]
    seen_out: List[Tensor] = []
    vit.transformer.resblocks[0].register_forward_hook(lambda _m, _a, out: seen_out.append(out))
    with torch.no_grad():
        plain_sos = vit.encode_text_embeddings(emb, sos)
        kv_sos = vit.encode_text_embeddings(emb, sos, kv_prompts=kv)
        plain = vit.encode_text_embeddings(emb, text.argmax(-1))
        with_kv = vit.encode_text_embeddings(emb, text.argmax(-1), kv_prompts=kv)
    assert not torch.allclose(plain_sos, kv_sos, atol=1e-4)
    assert not torch.allclose(plain, with_kv, atol=1e-4)
    assert seen_out[-1].shape == (3, int(text.argmax(-1).max()) + 1, 64)  # length unchanged


def test_kv_text_prompts_match_explicit_block_computation(vit):
    """Block output = x + out_proj(attn(ln_1 x | keys/values [ln_1 x; ln_1 p], causal among x)) + MLP."""
    block = vit.transformer.resblocks[0]
    x, p = _randn(2, 6, 64), _randn(3, 64, seed=4)
    with torch.no_grad():
        h = x + _reference_attention(block.attn, block.ln_1(x), block.ln_1(p), causal=True)
        expected = h + block.mlp(block.ln_2(h))
        torch.testing.assert_close(block(x, p), expected, rtol=1e-5, atol=1e-5)


def test_prompt_lists_longer_than_the_stack_are_rejected(vit):
    text = tokenize(["cat"])
    with pytest.raises(ValueError, match="13 entries but the transformer has 12 layers"):
        vit.encode_text_embeddings(vit.token_embedding(text), text.argmax(-1), deep_prompts=[None] * 13)


def test_gradients_reach_all_prompt_kinds(vit):
    text = tokenize(PROMPTS)
    deep = nn.Parameter(_randn(2, 64))
    kv = nn.Parameter(_randn(3, 64))
    vis_shallow = nn.Parameter(_randn(2, 128))
    vis_kv = nn.Parameter(_randn(2, 128))
    features = vit.encode_text_embeddings(vit.token_embedding(text), text.argmax(-1), deep_prompts=[None, deep],
                                          kv_prompts=[kv])
    image = vit.encode_image(_images(1), prompts=vis_shallow, kv_prompts=[None, vis_kv])
    (features.sum() + image.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (deep, kv, vis_shallow, vis_kv))


# --- vision hooks ------------------------------------------------------------------------------

def test_empty_image_prompts_equal_plain(vit):
    images = _images()
    with torch.no_grad():
        plain = vit.encode_image(images)
        empty = vit.encode_image(images, prompts=torch.zeros(0, 128), deep_prompts=[None, torch.zeros(0, 128)],
                                 kv_prompts=[torch.zeros(0, 128), torch.zeros(2, 0, 128)])
        empty_before = vit.encode_image(images, prompts=torch.zeros(2, 0, 128), prompts_before_ln_pre=True)
    assert torch.equal(plain, empty) and torch.equal(plain, empty_before)


@pytest.mark.parametrize("before_ln_pre", [False, True])
def test_vpt_prompts_inserted_after_cls_and_replaced_per_layer(vit, before_ln_pre):
    images, n = _images(), 3
    shallow, deep1 = _randn(n, 128), _randn(2, n, 128, seed=2)
    seen = _capture_inputs(vit.visual.transformer.resblocks)
    with torch.no_grad():
        plain = vit.encode_image(images)
        vit.encode_image(images, prompts=shallow, prompts_before_ln_pre=before_ln_pre)
        deep = vit.encode_image(images, prompts=shallow, deep_prompts=[None, deep1],
                                prompts_before_ln_pre=before_ln_pre)
    (plain0, shallow0, deep0), (_, shallow1, deep1_in) = seen[:2]  # blocks 0 and 1 of 12
    assert deep0.shape == (2, 1 + n + 196, 128)
    expected = vit.visual.ln_pre(shallow) if before_ln_pre else shallow
    torch.testing.assert_close(deep0[:, 1:1 + n], expected.expand(2, n, 128), rtol=0, atol=1e-6)
    assert torch.equal(deep0[:, :1], plain0[:, :1]) and torch.equal(deep0[:, 1 + n:], plain0[:, 1:])
    assert torch.equal(deep1_in[:, 1:1 + n], deep1)
    assert torch.equal(deep1_in[:, :1], shallow1[:, :1]) and torch.equal(deep1_in[:, 1 + n:], shallow1[:, 1 + n:])
    assert not torch.allclose(plain, deep, atol=1e-4)


def test_vpt_prompt_position_does_not_matter(vit):
    """Prompts after CLS (ours) equal prompts appended after the patches (MaPLe): no positional embedding."""
    images, prompt = _images(), _randn(4, 128)
    with torch.no_grad():
        ours = vit.encode_image(images)
        ours_p = vit.encode_image(images, prompts=prompt)
        v = vit.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(2, 1, -1), x], 1) + v.positional_embedding
        x = torch.cat([v.ln_pre(x), prompt.expand(2, -1, -1)], 1)
        appended = v.ln_post(v.transformer(x)[:, 0]) @ v.proj
    torch.testing.assert_close(ours_p, appended, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, ours_p, atol=1e-4)


def test_vision_deep_prompts_need_slots(vit):
    with pytest.raises(ValueError, match="prompt slots"):
        vit.encode_image(_images(1), prompts=_randn(2, 128), deep_prompts=[None, _randn(3, 128)])


def test_vision_kv_prompts_change_output(vit):
    images = _images()
    with torch.no_grad():
        plain = vit.encode_image(images)
        kv = vit.encode_image(images, kv_prompts=[_randn(4, 128), _randn(2, 1, 128)])
    assert kv.shape == plain.shape and not torch.allclose(plain, kv, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(prompts=torch.zeros(2, 512)), dict(deep_prompts=[None]),
                                    dict(kv_prompts=[torch.zeros(1, 512)])])
def test_resnet_rejects_image_prompts(rn, kwargs):
    with pytest.raises(ValueError, match="need a ViT image encoder.*ModifiedResNet") as info:
        rn.encode_image(_images(1), **kwargs)
    assert "MaPLe" in str(info.value) and "VPT" in str(info.value)
    assert rn.encode_image(_images(1)).shape == (1, 64)


def test_fp16_model_runs_prompts_in_half(state_dicts):
    model = build_model(state_dicts[VIT])
    text = tokenize(["cat"])
    with torch.no_grad():
        image = model.encode_image(_images(1), prompts=_randn(2, 128), kv_prompts=[_randn(1, 128)])
        txt = model.encode_text_embeddings(model.token_embedding(text), text.argmax(-1),
                                           deep_prompts=[None, _randn(1, 64)])
    assert image.dtype == txt.dtype == torch.float16


# --- malformed state dicts ---------------------------------------------------------------------

def test_wrong_shape_state_dict_is_a_clear_error(state_dicts):
    sd = dict(state_dicts[VIT])
    sd["transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(10, 64)
    mismatch = r"transformer\.resblocks\.1\.mlp\.c_fc\.weight \(10, 64\) vs \(256, 64\)"
    with pytest.raises(ValueError, match=mismatch) as info:
        build_model(sd)
    assert "ViT(width=128, layers=12, patch=16" in str(info.value)


def test_missing_and_unexpected_keys_are_named(state_dicts):
    sd = dict(state_dicts[RN])
    del sd["visual.layer2.0.bn1.running_var"]
    sd["visual.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        build_model(sd)
    message = str(info.value)
    assert "missing keys (1): visual.layer2.0.bn1.running_var" in message
    assert "unexpected keys (1): visual.extra.weight" in message
    assert "ModifiedResNet(layers=(3, 4, 6, 3), width=16" in message


def test_non_clip_state_dict_is_a_clear_error():
    with pytest.raises(ValueError, match="not a CLIP state dict.*'ln_final.weight'"):
        build_model({"visual.proj": torch.zeros(2, 2), "visual.conv1.weight": torch.zeros(2, 3, 4, 4),
                     "visual.positional_embedding": torch.zeros(5, 2)})
