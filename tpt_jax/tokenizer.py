"""Text <-> token ids and chat templates on the Rust `tokenizers` package (no torch/transformers).

`Tokenizer` reads and writes Hugging Face tokenizer directories so that
`transformers.AutoTokenizer.from_pretrained` loads what we save with the same ids, and renders chat
templates the way transformers does. The `build_*` helpers assemble a `tokenizers.Tokenizer` from a
bare vocabulary (what a GGUF file stores); `tpt_jax.gguf_io` decides which one a file needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

# Tokens that end an assistant turn in the chat formats we meet; the engine stops on any of them.
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>",
)  # fmt: skip
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template transformers keeps."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ):
        self.backend = backend
        given = dict(zip(_SPECIAL_NAMES, (bos_token, eos_token, unk_token, pad_token), strict=True))
        for name in ("bos_token", "eos_token"):
            if given[name] is not None and backend.token_to_id(given[name]) is None:
                raise ValueError(f"{name} {given[name]!r} is not in the vocabulary")
        # An unk / pad token missing from the vocabulary is dropped: transformers would append it
        # as a new id that the model has no embedding row for.
        self.special_tokens = {
            name: tok
            for name, tok in given.items()
            if tok is not None and backend.token_to_id(tok) is not None
        }
        self.chat_template = chat_template
        # What a template's `strftime_now` reads (Llama 3.x writes today's date into the system
        # turn). None: the wall clock, as transformers; a run fixes it so its prompts never change.
        self.template_time: datetime | None = None

    # --- ids -----------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`; like transformers, BOS (where the model uses one) is added by default."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def _special_id(self, name: str) -> int | None:
        tok = self.special_tokens.get(name)
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """EOS first, then every end-of-turn token the vocabulary has (deduplicated)."""
        ids = [self.eos_token_id] + [self.backend.token_to_id(t) for t in END_OF_TURN_TOKENS]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # --- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        **template_kwargs: Any,
    ) -> list[int] | str:
        """Render `messages` as transformers does; ids (no special tokens added) or the string."""
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat template (a base model?); write the prompt as text"
            )
        # As transformers: tools / documents are None (not undefined, which `is not none` passes),
        # then the named special tokens, and explicit kwargs win.
        context = {"tools": None, "documents": None, **self.special_tokens}
        if self.template_time is not None:
            context["strftime_now"] = self.template_time.strftime  # shadows the global clock
        context.update(template_kwargs)
        text = _compile(self.chat_template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **context,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # --- Hugging Face directories --------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Read a HF tokenizer directory: tokenizer.json plus its config and template files."""
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{d}: no tokenizer.json (only fast-tokenizer directories load)"
            )
        backend = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        config = _read_json(d / "tokenizer_config.json")
        special_map = _read_json(d / "special_tokens_map.json")
        special = {
            name: _token_text(config.get(name, special_map.get(name))) for name in _SPECIAL_NAMES
        }
        template = _pick_template(config.get("chat_template"))
        if (d / "chat_template.jinja").is_file():  # transformers >= 4.52 writes templates here
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            template = _pick_template(_read_json(d / "chat_template.json").get("chat_template"))
        return cls(backend, chat_template=template, **special)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        # The generic fast class loads tokenizer.json untouched in transformers 4.x and 5.x; a
        # model-specific class (GemmaTokenizer, ...) may rebuild the pipeline from the vocabulary.
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **self.special_tokens,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        _write_json(d / "tokenizer_config.json", config)
        _write_json(d / "special_tokens_map.json", self.special_tokens)


# --- building a backend from a bare vocabulary ----------------------------------------------------


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in keep)})
    return table


def build_byte_level_bpe(
    tokens: Sequence[str], merges: Sequence[tuple[str, str]], split_regex: str | None
) -> tokenizers.Tokenizer:
    """GPT-2 style BPE. `split_regex` runs before ByteLevel's own GPT-2 regex (None: only that)."""
    alphabet = byte_alphabet()
    chars = set(alphabet.values())
    vocab = {
        t if set(t) <= chars else "".join(alphabet[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    model = BPE(vocab, list(merges), continuing_subword_prefix="", end_of_word_suffix="")
    backend = tokenizers.Tokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_regex is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split_regex), behavior="isolated"), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    return backend


def build_sentencepiece_bpe(
    tokens: Sequence[str], merges: Sequence[tuple[str, str]], unk_token: str, *, gemma: bool
) -> tokenizers.Tokenizer:
    """SentencePiece BPE with byte fallback: Gemma's space->'▁' normalizer, or LLaMA's Metaspace."""
    vocab = {t: i for i, t in enumerate(tokens)}
    model = BPE(vocab, list(merges), unk_token=unk_token, fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=False)
        steps.append(decoders.Strip(" ", 1, 0))  # drop the space Metaspace prepended
    backend.decoder = decoders.Sequence(steps)
    return backend


def merges_from_ranking(tokens: Sequence[str], rank: Mapping[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary, best-ranked merged token first.

    SentencePiece files store pieces and scores, not merges: every split of a piece into two pieces
    is a merge, ranked by the piece's score. Ties break exactly as transformers' `generate_merges`
    does (pair ids, then longer left / right piece first), so both produce the same ids.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[str, str, float]] = []
    for piece, score in rank.items():
        local = [
            (piece[:k], piece[k:], score)
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def add_vocab_tokens(
    backend: tokenizers.Tokenizer, control: Sequence[str], user_defined: Sequence[str]
) -> None:
    """Match control tokens (special) and user-defined tokens (not special) whole, never split."""
    if control:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    if user_defined:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])


def set_special_post_processor(
    backend: tokenizers.Tokenizer, bos: str | None, eos: str | None
) -> None:
    """What `encode(..., add_special_tokens=True)` adds around a sequence (BOS and / or EOS)."""
    pre = f"{bos}:0 " if bos else ""
    post = f" {eos}:0" if eos else ""
    pair = f"{pre}$A:0{post}{f' {bos}:1' if bos else ''} $B:1{f' {eos}:1' if eos else ''}"
    special = [(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{pre}$A:0{post}", pair=pair, special_tokens=special
    )


# --- helpers --------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    # Same environment as transformers: sandboxed, trim/lstrip blocks, loop controls, its globals
    # and its non-escaping `tojson`, so a template renders to the same string.
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant spans for masks; render the body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _token_text(value: Any) -> str | None:
    # Older configs serialise special tokens as AddedToken dicts.
    return value.get("content") if isinstance(value, dict) else value


def _pick_template(value: Any) -> str | None:
    # A list of named templates: the one named "default" is what apply_chat_template uses.
    if isinstance(value, list):
        named = {t["name"]: t["template"] for t in value}
        return named.get("default", next(iter(named.values()), None))
    return value


__all__ = [
    "Tokenizer",
    "END_OF_TURN_TOKENS",
    "add_vocab_tokens",
    "build_byte_level_bpe",
    "build_sentencepiece_bpe",
    "merges_from_ranking",
    "set_special_post_processor",
]
