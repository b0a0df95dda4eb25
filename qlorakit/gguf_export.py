"""Write a merged model as one GGUF file, the format llama.cpp and Ollama serve.

The file holds what llama.cpp reads: the weights under its tensor names (the gguf library's name
map), its hyperparameter keys, the tokenizer (vocabulary, merges, token kinds, special ids) and the
chat template the adapter was trained with. The families are those transformers also reads back
from GGUF, so every export can be checked against the merged model it came from: LLaMA, Mistral
(stored as a llama model, as llama.cpp's own converter stores it; transformers reads it back as a
LLaMA, the same computation) and Qwen2. What the written keys cannot say (rope scaling, an
activation other than SiLU, biases on LLaMA projections, a head size other than hidden / heads,
sliding-window attention, a tokenizer other than byte-level BPE) is refused before any merging.

Types: ``f16`` and ``bf16`` store every matrix in 16 bits; ``q8_0`` stores each run of 32 weights
as 8-bit integers with one f16 scale (llama.cpp's Q8_0), about half the size of f16. Vectors
(norms, biases) stay f32, as in llama.cpp's own files, and a q8_0 matrix whose rows are not a
multiple of 32 is stored f16 (the summary counts each type). Tensors are converted one at a time
while the file is written, so the export needs about one tensor's worth of memory beyond the model.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass

from .errors import ModelError

GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class GgufFamily:
    """How llama.cpp stores one transformers model type."""

    architecture: str  # general.architecture: llama.cpp's name for the graph it builds
    interleaved_rotary: bool  # llama.cpp pairs rotary dimensions (0, 1), (2, 3)...; transformers (0, d/2)...


GGUF_FAMILIES = {
    "llama": GgufFamily("llama", interleaved_rotary=True),
    "mistral": GgufFamily("llama", interleaved_rotary=True),
    "qwen2": GgufFamily("qwen2", interleaved_rotary=False),
}

# --gguf_type: (how each matrix is stored, llama.cpp's file type), by gguf's enum names.
GGUF_TYPES = {"f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}

# tokenizer.ggml.pre: llama.cpp's name for how a byte-level BPE vocabulary splits text before
# merging. GPT-2's split is built into the ByteLevel pre-tokenizer; the others are a Split regex
# (taken from transformers' GGUF reader, the side that must rebuild them) before ByteLevel.
GPT2_SPLITTING = "gpt-2"
REGEX_SPLITTINGS = ("llama-bpe", "qwen2")


def head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def family_refusal(config):
    """Why a model of this config cannot be written as GGUF here (one line), or None."""
    if config.model_type not in GGUF_FAMILIES:
        return (f"--gguf writes {', '.join(GGUF_FAMILIES)} models, not {config.model_type}: merge without --gguf "
                "and convert the merged folder with llama.cpp's own converter")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    unsupported = {
        f"{rope_type} rope scaling": rope_type != "default",
        f"the {config.hidden_act} activation": config.hidden_act != "silu",
        "biases on the attention or MLP projections": getattr(config, "attention_bias", False)
        or getattr(config, "mlp_bias", False),
        f"head_dim {head_dim(config)} (not hidden_size / num_attention_heads)":
            head_dim(config) * config.num_attention_heads != config.hidden_size,
        "sliding-window attention": getattr(config, "use_sliding_window", False),
    }
    reasons = [reason for reason, present in unsupported.items() if present]
    if reasons:
        return f"--gguf cannot describe this {config.model_type} model: it has {', '.join(reasons)}"
    return None


def regex_splittings():
    """{Split regex: llama.cpp's name} for the byte-level splittings transformers' GGUF reader rebuilds."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return {GGUF_PRE_TOKENIZER_SPLITS[name]: name for name in REGEX_SPLITTINGS}


def is_byte_level(step, use_regex):
    return step.get("type") == "ByteLevel" and not step.get("add_prefix_space") and step.get("use_regex") == use_regex


def byte_level_splitting(pre_tokenizer):
    """tokenizer.ggml.pre for a tokenizer.json pre-tokenizer, or None if it is not one llama.cpp names."""
    pre_tokenizer = pre_tokenizer or {}
    if is_byte_level(pre_tokenizer, use_regex=True):
        return GPT2_SPLITTING
    steps = pre_tokenizer.get("pretokenizers") or []
    if pre_tokenizer.get("type") != "Sequence" or len(steps) != 2 or not is_byte_level(steps[1], use_regex=False):
        return None
    split = steps[0]
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    return regex_splittings().get((split.get("pattern") or {}).get("Regex"))


def tokenizer_refusal(tokenizer):
    """Why this tokenizer cannot be written as GGUF here (one line), or None. Only byte-level BPE:
    llama.cpp reads a SentencePiece vocabulary with the piece scores and kinds of its original
    model file, which the merged folder's tokenizer.json does not keep."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, normalizer = backend.get("model") or {}, backend.get("normalizer")
    byte_level_bpe = (model.get("type") == "BPE" and not model.get("byte_fallback")
                      and (backend.get("decoder") or {}).get("type") == "ByteLevel")
    if not byte_level_bpe or byte_level_splitting(backend.get("pre_tokenizer")) is None:
        kind = "SentencePiece-style (byte fallback)" if model.get("byte_fallback") else model.get("type")
        return ("--gguf writes byte-level BPE tokenizers (GPT-2, Llama 3 or Qwen2 splitting); this one is "
                f"{kind} with pre-tokenizer {(backend.get('pre_tokenizer') or {}).get('type')}: "
                "merge without --gguf and convert the merged folder with llama.cpp's own converter")
    if normalizer is not None and normalizer.get("type") != "NFC":  # NFC: Qwen2's; GGUF readers skip it
        return f"--gguf cannot carry this tokenizer's {normalizer.get('type')} normalizer"
    return None


def check_gguf_export(base_model):
    """Refuse (ModelError, one line) a base whose merge could not be written as GGUF, before merging."""
    from transformers import AutoConfig, AutoTokenizer

    refusal = family_refusal(AutoConfig.from_pretrained(base_model))
    refusal = refusal or tokenizer_refusal(AutoTokenizer.from_pretrained(base_model))
    if refusal:
        raise ModelError(f"{base_model}: {refusal}")


def token_kinds(tokenizer, rows):
    """(tokens by id, their gguf TokenType) for `rows` embedding rows: added special tokens are
    CONTROL, other added tokens USER_DEFINED; rows past the vocabulary get UNUSED placeholders."""
    from gguf import TokenType

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) > rows:
        raise ModelError(f"the tokenizer's {len(by_id)} ids do not number the model's {rows} embedding rows")
    added = tokenizer.added_tokens_decoder
    kinds = [TokenType.NORMAL if index not in added else
             TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED for index in range(len(by_id))]
    padding = range(len(by_id), rows)
    return ([by_id[index] for index in range(len(by_id))] + [f"[PAD{index}]" for index in padding],
            kinds + [TokenType.UNUSED] * len(padding))


def adds_special_token(tokenizer, position, token_id):
    """Whether the tokenizer adds this special token first (position 0) or last (-1) to encoded text."""
    ids = tokenizer("a")["input_ids"]
    return token_id is not None and ids[position] == token_id


def add_tokenizer(writer, tokenizer, rows):
    """The byte-level BPE vocabulary, merges, token kinds, special ids and the chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens, kinds = token_kinds(tokenizer, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(byte_level_splitting(backend.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    merges = backend["model"]["merges"]  # "a b" in older tokenizer.json files, ["a", "b"] in newer ones
    writer.add_token_merges([merge if isinstance(merge, str) else " ".join(merge) for merge in merges])
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    for name, token_id in special.items():
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(adds_special_token(tokenizer, 0, special["bos"]))
    writer.add_add_eos_token(adds_special_token(tokenizer, -1, special["eos"]))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def add_hyperparameters(writer, config, rows):
    """llama.cpp's keys for the model's shape, under its architecture's prefix."""
    writer.add_vocab_size(rows)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim(config))


def interleave_rotary_rows(weight, heads):
    """Reorder each head's rows from transformers' rotary layout (pairs i and i + d/2) to
    llama.cpp's (pairs 2i and 2i + 1): the same attention, computed on llama.cpp's row order."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns)


def tensor_plan(model, family):
    """[(gguf name, tensor, heads whose rotary rows to interleave or None)] in the model's order.

    A tied output head is left out (llama.cpp reuses the embeddings, as transformers does when
    the file has no output tensor). A tensor with no llama.cpp name is an error, never dropped.
    """
    from gguf import MODEL_ARCH_NAMES, MODEL_TENSOR, get_tensor_name_map

    config = model.config
    architecture = next(arch for arch, name in MODEL_ARCH_NAMES.items() if name == family.architecture)
    names = get_tensor_name_map(architecture, config.num_hidden_layers)
    rotary_heads = {MODEL_TENSOR.ATTN_Q: config.num_attention_heads,
                    MODEL_TENSOR.ATTN_K: config.num_key_value_heads or config.num_attention_heads}
    plan = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        found = names.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ModelError(f"{name} has no llama.cpp tensor name for {family.architecture}: cannot write it as GGUF")
        kind, gguf_name = found
        interleave = family.interleaved_rotary and gguf_name.endswith(".weight") and kind in rotary_heads
        plan.append((gguf_name, tensor, rotary_heads[kind] if interleave else None))
    return plan


def storage_type(tensor, matrix_type):
    """Vectors in f32; matrices in the chosen type, or f16 where rows do not fill its blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if tensor.dim() == 1:
        return GGMLQuantizationType.F32
    block_size, _ = GGML_QUANT_SIZES[matrix_type]
    return matrix_type if tensor.shape[-1] % block_size == 0 else GGMLQuantizationType.F16


F16_LARGEST = 65504.0


def stored_bytes(name, tensor, interleave_heads, ggml_type):
    """The tensor as the file stores it: a numpy array of ggml_type's values or blocks. A value
    f16 cannot hold is an error (it would be stored as infinity)."""
    from gguf import GGMLQuantizationType, quants

    values = tensor.detach().float().cpu()
    if ggml_type == GGMLQuantizationType.F16 and values.abs().max().item() > F16_LARGEST:
        raise ModelError(f"{name} holds values beyond f16's range: choose --gguf_type bf16")
    if interleave_heads:
        values = interleave_rotary_rows(values, interleave_heads)
    return quants.quantize(values.numpy(), ggml_type)


def write_gguf(model, tokenizer, path, gguf_type, name):
    """Write the merged causal LM and its tokenizer to `path` as GGUF with matrices in `gguf_type`
    (a GGUF_TYPES key). The caller makes the write atomic (the merge writes into a temporary
    folder renamed once whole)."""
    import numpy as np
    from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType, quant_shape_to_byte_shape

    family = GGUF_FAMILIES[model.config.model_type]
    matrix_name, file_type = GGUF_TYPES[gguf_type]
    plan = [(gguf_name, tensor, heads, storage_type(tensor, GGMLQuantizationType[matrix_name]))
            for gguf_name, tensor, heads in tensor_plan(model, family)]
    rows = model.get_input_embeddings().weight.shape[0]
    writer = GGUFWriter(path, family.architecture)
    try:
        writer.add_name(name)
        writer.add_file_type(LlamaFileType[file_type])
        writer.add_quantization_version(GGML_QUANT_VERSION)
        add_hyperparameters(writer, model.config, rows)
        add_tokenizer(writer, tokenizer, rows)
        for gguf_name, tensor, _, ggml_type in plan:
            shape = tuple(tensor.shape)
            size = int(np.prod(quant_shape_to_byte_shape(shape, ggml_type)))
            writer.add_tensor_info(gguf_name, shape, np.float32, size, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for gguf_name, tensor, heads, ggml_type in plan:
            writer.write_tensor_data(stored_bytes(gguf_name, tensor, heads, ggml_type))
    finally:
        writer.close()


def gguf_summary(path):
    """'N tensors (k F16, ...), S MB, llama.cpp architecture A', read back from the written file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    kinds = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    counted = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return (f"{len(reader.tensors)} tensors ({counted}), {os.path.getsize(path) / 2**20:.1f} MB, "
            f"llama.cpp architecture {architecture}")
