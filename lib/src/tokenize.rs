//! Tokenizers: any Hugging Face `tokenizer.json` (WordPiece, BPE, byte-level BPE,
//! Unigram) through the `tokenizers` crate, a character-level tokenizer for small
//! experiments, and byte-level BPE trained from a text file.
//!
//! Inputs longer than the model accepts are truncated, as the checkpoint's files say:
//! sentence-transformers' `max_seq_length` wins over `tokenizer_config.json`'s
//! `model_max_length`, and neither may exceed the model's positions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TruncationParams};

use crate::error::{invalid, Error, Result};

/// The end-of-text token trained BPE tokenizers reserve, as GPT-2's does.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A tokenizer with its truncation length.
#[derive(Clone)]
pub struct Tokenizer {
    backend: Backend,
    max_length: Option<usize>,
}

#[derive(Clone)]
enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    Char(CharVocab),
}

/// One id per distinct character of a text, in sorted order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CharVocab {
    chars: Vec<char>,
    #[serde(skip)]
    ids: BTreeMap<char, u32>,
}

/// The file form of a character-level tokenizer (tchlab's own `tokenizer.json` variant).
#[derive(Serialize, Deserialize)]
struct CharFile {
    tchlab_char_tokenizer: u32,
    chars: Vec<char>,
}

impl CharVocab {
    fn new(chars: Vec<char>) -> Self {
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        CharVocab { chars, ids }
    }
}

impl Tokenizer {
    /// Reads a `tokenizer.json` (Hugging Face's, or tchlab's character-level one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::limits::read_text(path, crate::limits::MAX_JSON_BYTES)?;
        if let Ok(file) = serde_json::from_str::<CharFile>(&text) {
            return Ok(Tokenizer { backend: Backend::Char(CharVocab::new(file.chars)), max_length: None });
        }
        Self::from_hf_json(&text, path)
    }

    /// A Hugging Face tokenizer from the text of a `tokenizer.json`; `origin` names it in errors.
    fn from_hf_json(text: &str, origin: &Path) -> Result<Self> {
        let mut hf: tokenizers::Tokenizer =
            text.parse().map_err(|e| Error::format(origin, format!("not a tokenizer.json that the tokenizers library reads: {e}")))?;
        // Padding and truncation are applied per call here, not by settings in the file.
        hf.with_padding(None);
        hf.with_truncation(None).map_err(|e| Error::format(origin, e.to_string()))?;
        Ok(Tokenizer { backend: Backend::Hf(Box::new(hf)), max_length: None })
    }

    /// The tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model =
    /// gpt2`: Llama 3, SmolLM2, Qwen) or SentencePiece (`llama`: Gemma, Llama 2, Mistral).
    pub fn from_gguf(meta: &crate::formats::gguf::Metadata, max_positions: i64) -> Result<Self> {
        let mut tokenizer = match meta.string("tokenizer.ggml.model")? {
            "gpt2" => Self::byte_level_from_gguf(meta)?,
            "llama" => Self::sentencepiece_from_gguf(meta)?,
            other => {
                return Err(Error::format(
                    &meta.path,
                    format!("its tokenizer is of type `{other}`; tchlab builds GGUF tokenizers of type `gpt2` (byte-level BPE) and `llama` (SentencePiece)"),
                ))
            }
        };
        tokenizer.set_max_length(Some(max_positions.max(1) as usize))?;
        Ok(tokenizer)
    }

    /// Byte-level BPE as transformers' GGUF loader builds it: the vocabulary and merges,
    /// control tokens (type 3) as special tokens, byte-level pre-tokenizer and decoder.
    /// It adds no BOS token: the files tchlab reads say `add_bos_token = false`, and
    /// llama.cpp honours it (transformers' loader prepends one regardless).
    fn byte_level_from_gguf(meta: &crate::formats::gguf::Metadata) -> Result<Self> {
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let merges = meta.strings("tokenizer.ggml.merges")?;
        let types = meta.ints("tokenizer.ggml.token_type").unwrap_or_default();
        let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i.into())).collect();
        let added: Vec<serde_json::Value> = types
            .iter()
            .enumerate()
            .filter(|(_, &kind)| kind == TOKEN_CONTROL || kind == TOKEN_USER_DEFINED)
            .filter_map(|(i, &kind)| {
                let content = tokens.get(i)?;
                Some(serde_json::json!({"id": i, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": kind == TOKEN_CONTROL}))
            })
            .collect();
        let unk = meta.token("tokenizer.ggml.unknown_token_id");
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Self::from_hf_json(&json.to_string(), &meta.path)
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`) as llama.cpp
    /// tokenises with it: spaces become `▁`, adjacent pieces merge, highest score first,
    /// while the merged piece is in the vocabulary (SentencePiece's BPE), characters
    /// outside it fall back to their bytes (`<0x0A>`); control tokens (type 3) are
    /// special and user-defined ones (type 4: Gemma's runs of spaces and newlines, its
    /// HTML tags) are matched whole in the raw text; a `▁` goes before the text and after
    /// each such token unless the file says `add_space_prefix = false`; a BOS (and EOS) is
    /// added as the file says (`add_bos_token`, default true).
    ///
    /// The merges are derived from the scores as transformers derives them for GGUF files
    /// without merges (`GGUFTokenizerSkeleton`), so that its BPE reproduces the pairing.
    /// transformers 4.x reads Gemma's vocabulary as a Unigram model instead, which the
    /// file's scores (the piece order, not log-probabilities) do not support: it splits
    /// `Hello world` into `Hello ▁w or ld` where llama.cpp gives `Hello ▁world`.
    fn sentencepiece_from_gguf(meta: &crate::formats::gguf::Metadata) -> Result<Self> {
        use tokenizers::models::bpe::BPE;
        let path = &meta.path;
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let scores = meta
            .floats("tokenizer.ggml.scores")
            .map_err(|_| Error::format(path, "its SentencePiece vocabulary has no `tokenizer.ggml.scores`, which say in what order pieces merge"))?;
        let types = match meta.ints("tokenizer.ggml.token_type") {
            Ok(types) => types,
            Err(_) => vec![TOKEN_NORMAL; tokens.len()],
        };
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(Error::format(
                path,
                format!(
                    "its vocabulary lists {} tokens but {} scores and {} token types; each token needs one of each",
                    tokens.len(),
                    scores.len(),
                    types.len()
                ),
            ));
        }
        let mut ids = std::collections::HashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(*token, id) {
                return Err(Error::format(path, format!("its vocabulary lists the token {token:?} twice (ids {first} and {id})")));
            }
        }
        let special_id = |key: &str| -> Result<Option<usize>> {
            match meta.int(key) {
                Err(_) => Ok(None),
                Ok(id) if (0..tokens.len() as i64).contains(&id) => Ok(Some(id as usize)),
                Ok(id) => Err(Error::format(path, format!("`{key}` is {id}, outside its vocabulary of {} tokens", tokens.len()))),
            }
        };
        let (bos, eos) = (special_id("tokenizer.ggml.bos_token_id")?, special_id("tokenizer.ggml.eos_token_id")?);
        let unk = special_id("tokenizer.ggml.unknown_token_id")?.unwrap_or(0);
        let merges = sentencepiece_merges(&tokens, &scores, &ids);
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(tokens.get(unk).map_or_else(String::new, |t| t.to_string()))
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| Error::format(path, format!("its SentencePiece vocabulary does not make a tokenizer: {e}")))?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        let flag = |key: &str, default: bool| meta.bool(key).unwrap_or(default);
        // llama.cpp puts a space before the text and after every token matched whole
        // (Llama 2's `▁` dummy prefix; Gemma's files turn it off). The normalizer runs
        // on each stretch of text between such tokens, so a prepended `▁` lands in the
        // same places.
        let space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
        let mut normalizers = vec![serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
        let mut decoders = vec![
            serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            serde_json::json!({"type": "ByteFallback"}),
            serde_json::json!({"type": "Fuse"}),
        ];
        if space_prefix {
            normalizers.insert(0, serde_json::json!({"type": "Prepend", "prepend": "▁"}));
            decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let normalizer: tokenizers::NormalizerWrapper = component(path, serde_json::json!({"type": "Sequence", "normalizers": normalizers}))?;
        let decoder: tokenizers::DecoderWrapper = component(path, serde_json::json!({"type": "Sequence", "decoders": decoders}))?;
        hf.with_normalizer(Some(normalizer));
        hf.with_decoder(Some(decoder));
        let mut around = vec![];
        if let Some(bos) = bos.filter(|_| flag("tokenizer.ggml.add_bos_token", true)) {
            around.push((tokens[bos], "before"));
        }
        if let Some(eos) = eos.filter(|_| flag("tokenizer.ggml.add_eos_token", false)) {
            around.push((tokens[eos], "after"));
        }
        if !around.is_empty() {
            let token = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
            let mut single: Vec<serde_json::Value> = around.iter().filter(|(_, at)| *at == "before").map(|(t, _)| token(t)).collect();
            single.push(serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}));
            single.extend(around.iter().filter(|(_, at)| *at == "after").map(|(t, _)| token(t)));
            let specials: serde_json::Map<String, serde_json::Value> =
                around.iter().map(|(t, _)| (t.to_string(), serde_json::json!({"id": t, "ids": [ids[t]], "tokens": [t]}))).collect();
            let processor: tokenizers::PostProcessorWrapper =
                component(path, serde_json::json!({"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials}))?;
            hf.with_post_processor(Some(processor));
        }
        let added = |kind: i64| -> Vec<AddedToken> {
            let special = kind == TOKEN_CONTROL;
            let chosen = types.iter().zip(&tokens).filter(|(&k, t)| k == kind && !t.is_empty());
            chosen.map(|(_, t)| AddedToken::from(t.to_string(), special).normalized(false)).collect()
        };
        hf.add_special_tokens(&added(TOKEN_CONTROL));
        hf.add_tokens(&added(TOKEN_USER_DEFINED));
        Ok(Tokenizer { backend: Backend::Hf(Box::new(hf)), max_length: None })
    }

    /// Reads a model directory's `tokenizer.json` and the truncation length its
    /// other files give, bounded by `max_positions`.
    pub fn from_model_dir(dir: &Path, max_positions: i64) -> Result<Self> {
        let mut tokenizer = Self::from_file(dir.join("tokenizer.json"))?;
        let read_number = |file: &str, key: &str| -> Option<usize> {
            let text = crate::limits::read_text(&dir.join(file), crate::limits::MAX_JSON_BYTES).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            json.get(key)?.as_u64().map(|n| n as usize)
        };
        let length = read_number("sentence_bert_config.json", "max_seq_length").or_else(|| read_number("tokenizer_config.json", "model_max_length"));
        let limit = max_positions.max(1) as usize;
        tokenizer.set_max_length(Some(length.map_or(limit, |n| n.min(limit))))?;
        Ok(tokenizer)
    }

    /// A character-level tokenizer over the characters of `text`.
    pub fn char_level(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return invalid!("cannot build a character tokenizer from empty text");
        }
        Ok(Tokenizer { backend: Backend::Char(CharVocab::new(chars)), max_length: None })
    }

    /// The largest vocabulary [`Tokenizer::train_bpe`] trains.
    pub const MAX_BPE_VOCAB: usize = 1 << 20;

    /// Trains a byte-level BPE tokenizer (GPT-2's kind) of `vocab_size` ids on a text file.
    pub fn train_bpe(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref();
        crate::limits::open_regular(path, crate::limits::MAX_TEXT_BYTES)?;
        if vocab_size > Self::MAX_BPE_VOCAB {
            return invalid!("--vocab {vocab_size} is more than the {} ids a trained BPE vocabulary may have here", Self::MAX_BPE_VOCAB);
        }
        let alphabet = ByteLevel::alphabet();
        if vocab_size <= alphabet.len() {
            return invalid!("a byte-level BPE vocabulary needs more than {} ids (one per byte); got --vocab {vocab_size}", alphabet.len());
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(alphabet.into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build();
        let mut hf = tokenizers::Tokenizer::new(BPE::default());
        hf.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        hf.with_decoder(Some(ByteLevel::default()));
        hf.train_from_files(&mut TrainerWrapper::BpeTrainer(trainer), vec![path.to_string_lossy().into_owned()])
            .map_err(|e| Error::format(path, format!("BPE training failed: {e}")))?;
        Ok(Tokenizer { backend: Backend::Hf(Box::new(hf)), max_length: None })
    }

    /// The truncation length, if any.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Sets the truncation length (`None`: no truncation).
    pub fn set_max_length(&mut self, max_length: Option<usize>) -> Result<()> {
        if max_length == Some(0) {
            return invalid!("the maximum length must be at least 1 token");
        }
        if let Backend::Hf(t) = &mut self.backend {
            let params = max_length.map(|max_length| TruncationParams { max_length, ..Default::default() });
            t.with_truncation(params).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        self.max_length = max_length;
        Ok(())
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Char(v) => v.chars.len(),
        }
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        match &self.backend {
            Backend::Hf(t) => t.token_to_id(token).map(i64::from),
            Backend::Char(v) => {
                let mut chars = token.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => v.ids.get(&c).map(|&i| i64::from(i)),
                    _ => None,
                }
            }
        }
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (`[CLS]`, `[SEP]`),
    /// truncated to the maximum length.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.encode_tokens(text)?.into_iter().map(|(id, _)| id).collect())
    }

    /// `(id, token)` pairs of `text`, as [`Tokenizer::encode`] gives the ids.
    pub fn encode_tokens(&self, text: &str) -> Result<Vec<(i64, String)>> {
        match &self.backend {
            Backend::Hf(t) => {
                let encoding = t.encode(text, true).map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}")))?;
                Ok(encoding.get_ids().iter().zip(encoding.get_tokens()).map(|(&id, tok)| (i64::from(id), tok.clone())).collect())
            }
            Backend::Char(v) => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    let Some(&id) = v.ids.get(&c) else {
                        return invalid!("the character {c:?} is not in this character tokenizer's vocabulary of {} characters", v.chars.len());
                    };
                    out.push((i64::from(id), c.to_string()));
                }
                out.truncate(self.max_length.unwrap_or(usize::MAX));
                Ok(out)
            }
        }
    }

    /// The same tokenizer without truncation, for data that must be read whole (its
    /// truncation is then decided by the caller).
    pub fn untruncated(&self) -> Result<Tokenizer> {
        let mut t = self.clone();
        t.set_max_length(None)?;
        Ok(t)
    }

    /// `(id, start, end)` of each token of `text`: byte offsets into `text` of the
    /// characters it covers (a token the tokenizer adds, such as a BOS, covers none:
    /// `start == end`). With `special`, the tokens the tokenizer adds around a text.
    /// Truncated as the tokenizer truncates ([`Tokenizer::untruncated`] does not).
    pub fn encode_offsets(&self, text: &str, special: bool) -> Result<Vec<(i64, usize, usize)>> {
        match &self.backend {
            Backend::Hf(t) => {
                let encoding = t.encode(text, special).map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}")))?;
                Ok(encoding.get_ids().iter().zip(encoding.get_offsets()).map(|(&id, &(start, end))| (i64::from(id), start, end)).collect())
            }
            Backend::Char(_) => {
                let ids = self.encode(text)?;
                Ok(ids.into_iter().zip(text.char_indices()).map(|(id, (at, c))| (id, at, at + c.len_utf8())).collect())
            }
        }
    }

    /// Token ids of a whole corpus: no special tokens, no truncation.
    ///
    /// Long texts are tokenised a piece at a time, checking for interrupts between
    /// pieces; for tokenizers.json pieces end after a newline that a non-space follows,
    /// where no pre-tokenizer joins characters across, so the ids are those of the
    /// whole text.
    pub fn encode_corpus(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = vec![];
        match &self.backend {
            Backend::Hf(t) => {
                let mut t = t.clone();
                t.with_truncation(None).map_err(|e| Error::Invalid(e.to_string()))?;
                for piece in corpus_pieces(text) {
                    crate::interrupt::check("tokenizing the corpus")?;
                    let encoding = t.encode(piece, false).map_err(|e| Error::Invalid(format!("tokenizing the corpus: {e}")))?;
                    ids.extend(encoding.get_ids().iter().map(|&i| i64::from(i)));
                }
            }
            Backend::Char(_) => {
                let mut untruncated = self.clone();
                untruncated.max_length = None;
                // Characters are tokens: any character boundary is a place to pause.
                let mut rest = text;
                while !rest.is_empty() {
                    crate::interrupt::check("tokenizing the corpus")?;
                    let mut end = rest.len().min(1 << 20);
                    while !rest.is_char_boundary(end) {
                        end += 1;
                    }
                    let (piece, tail) = rest.split_at(end);
                    ids.extend(untruncated.encode(piece)?);
                    rest = tail;
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        match &self.backend {
            Backend::Hf(t) => {
                let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
                t.decode(&ids, true).map_err(|e| Error::Invalid(format!("decoding: {e}")))
            }
            Backend::Char(v) => ids
                .iter()
                .map(|&i| {
                    v.chars
                        .get(i as usize)
                        .copied()
                        .ok_or_else(|| Error::Invalid(format!("id {i} is outside this character tokenizer's {} ids", v.chars.len())))
                })
                .collect(),
        }
    }

    /// The vocabulary's own piece for `id` (`Ġcat`, `▁cat`, `##s`, `<0x0A>`), as
    /// `tokenizer.json` spells it; `#id` for an id outside the vocabulary.
    pub fn piece(&self, id: i64) -> String {
        let piece = match &self.backend {
            Backend::Hf(t) => u32::try_from(id).ok().and_then(|i| t.id_to_token(i)),
            Backend::Char(v) => usize::try_from(id).ok().and_then(|i| v.chars.get(i)).map(char::to_string),
        };
        piece.unwrap_or_else(|| format!("#{id}"))
    }

    /// Token `id` as people read it, the one form every command and picture shows: its
    /// text, with a mark for each space (`␣`), newline (`↵`), tab (`⇥`) and carriage
    /// return (`␍`), other control characters and bytes that are not whole UTF-8
    /// characters (a byte-fallback piece, half of an emoji) as `\xNN`; special tokens
    /// (`<|im_start|>`, `[CLS]`) and WordPiece's `##` continuations as they are
    /// written. TransformerLens's `to_str_tokens` decodes each token alone the same
    /// way, without the marks.
    pub fn readable(&self, id: i64) -> String {
        self.readable_tokens(&[id]).remove(0)
    }

    /// [`Tokenizer::readable`] of each id.
    pub fn readable_tokens(&self, ids: &[i64]) -> Vec<String> {
        match &self.backend {
            Backend::Char(_) => ids.iter().map(|&id| readable_bytes(self.piece(id).as_bytes())).collect(),
            Backend::Hf(t) => {
                let (byte_level, added) = (is_byte_level(t), t.get_added_tokens_decoder());
                ids.iter()
                    .map(|&id| {
                        let index = u32::try_from(id).ok();
                        match index.and_then(|i| t.id_to_token(i)) {
                            None => format!("#{id}"),
                            Some(piece) if index.and_then(|i| added.get(&i)).is_some_and(|a| a.special) => piece,
                            Some(piece) => readable_bytes(&piece_bytes(&piece, byte_level)),
                        }
                    })
                    .collect()
            }
        }
    }

    /// Writes the tokenizer as `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = match &self.backend {
            Backend::Hf(t) => t.to_string(true).map_err(|e| Error::Invalid(format!("serializing the tokenizer: {e}")))?,
            Backend::Char(v) => serde_json::to_string_pretty(&CharFile { tchlab_char_tokenizer: 1, chars: v.chars.clone() }).expect("JSON"),
        };
        crate::atomic::write(path, |w| std::io::Write::write_all(w, json.as_bytes()))
    }
}

/// A tokenizer's component (normalizer, decoder, post-processor) from its JSON form.
fn component<T: serde::de::DeserializeOwned>(origin: &Path, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::format(origin, format!("building its tokenizer: {e}")))
}

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// BPE merges that pair pieces as SentencePiece's BPE does: every split of every piece
/// into two pieces of the vocabulary, ranked by the merged piece's score, highest
/// first, and among one piece's splits by the halves' scores (transformers'
/// `GGUFTokenizerSkeleton`).
fn sentencepiece_merges(tokens: &[&str], scores: &[f64], ids: &std::collections::HashMap<&str, usize>) -> Vec<(String, String)> {
    let score = |piece: &str| ids.get(piece).map_or(f64::NEG_INFINITY, |&i| scores[i]);
    let mut merges: Vec<(&str, &str, f64)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        let start = merges.len();
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push((left, right, scores[id]));
            }
        }
        merges[start..].sort_by(|a, b| (score(b.0), score(b.1)).partial_cmp(&(score(a.0), score(a.1))).unwrap_or(std::cmp::Ordering::Equal));
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

/// A byte-level BPE vocabulary as GGUF files hold it (`tokenizer.ggml.*`).
pub struct GgufVocabulary {
    /// Every token, by id.
    pub tokens: Vec<String>,
    /// Each token's type: 1 normal, 3 control (special), 4 user-defined, 5 unused.
    pub types: Vec<i64>,
    /// The merges, `"a b"`.
    pub merges: Vec<String>,
    /// Whether the pre-tokenizer is GPT-2's byte-level split and nothing else (llama.cpp's `gpt2`).
    pub gpt2_pre_tokenizer: bool,
}

impl Tokenizer {
    /// The vocabulary as a GGUF file holds it, `size` tokens long (ids the tokenizer does
    /// not use are `[PADn]`, unused, as llama.cpp's converter writes them). Byte-level BPE
    /// tokenizers only: the others are refused by name.
    pub fn gguf_vocabulary(&self, size: usize) -> Result<GgufVocabulary> {
        let refuse = |what: &str| {
            Err(Error::Invalid(format!("the tokenizer is {what}; tchlab writes GGUF tokenizers for byte-level BPE (GPT-2's, Llama 3's, SmolLM2's, Qwen's)")))
        };
        let Backend::Hf(hf) = &self.backend else { return refuse("character-level") };
        let json: serde_json::Value = serde_json::from_str(&hf.to_string(false).map_err(|e| Error::Invalid(format!("serializing the tokenizer: {e}")))?)
            .expect("the tokenizers library writes JSON");
        let model = &json["model"];
        if model["type"] != "BPE" || !is_byte_level(hf) {
            return refuse(&format!("a {} tokenizer", model["type"].as_str().unwrap_or("?")));
        }
        let mut tokens = vec![None; size];
        let mut types = vec![5; size];
        let vocab = model["vocab"].as_object().into_iter().flatten().filter_map(|(t, id)| Some((t.as_str(), id.as_u64()?, None)));
        let added =
            json["added_tokens"].as_array().into_iter().flatten().filter_map(|a| Some((a["content"].as_str()?, a["id"].as_u64()?, Some(a["special"] == true))));
        for (token, id, special) in vocab.chain(added) {
            let Some(slot) = tokens.get_mut(id as usize) else {
                return Err(Error::Invalid(format!("the tokenizer's token `{token}` has id {id}, beyond the model's {size} embeddings")));
            };
            *slot = Some(token.to_string());
            types[id as usize] = match special {
                None => 1,
                Some(true) => 3,
                Some(false) => 4,
            };
        }
        let tokens = tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
        let merges = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                serde_json::Value::String(pair) => Some(pair.clone()),
                serde_json::Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
                _ => None,
            })
            .collect();
        let gpt2_pre_tokenizer = json["pre_tokenizer"]["type"] == "ByteLevel" && json["pre_tokenizer"]["use_regex"] != false;
        Ok(GgufVocabulary { tokens, types, merges, gpt2_pre_tokenizer })
    }
}

/// Whether the tokenizer works on GPT-2's byte-level alphabet (its pieces spell bytes
/// as printable characters: `Ġ` is a space).
fn is_byte_level(t: &tokenizers::Tokenizer) -> bool {
    let mentions = |v: Option<serde_json::Value>| v.is_some_and(|v| v.to_string().contains("\"ByteLevel\""));
    mentions(t.get_decoder().and_then(|d| serde_json::to_value(d).ok())) || mentions(t.get_pre_tokenizer().and_then(|p| serde_json::to_value(p).ok()))
}

/// The bytes a (non-special) piece stands for: byte-fallback pieces (`<0x0A>`) are
/// their byte; byte-level pieces map back through GPT-2's alphabet; SentencePiece's
/// `▁` is a space.
fn piece_bytes(piece: &str, byte_level: bool) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')).filter(|h| h.len() == 2) {
        if let Ok(byte) = u8::from_str_radix(hex, 16) {
            return vec![byte];
        }
    }
    if byte_level {
        let table = byte_level_table();
        let mut bytes = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            match table.get(&c) {
                Some(&b) => bytes.push(b),
                None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        return bytes;
    }
    piece.replace('▁', " ").into_bytes()
}

/// GPT-2's `bytes_to_unicode`, inverted: the printable character each byte is spelt
/// with in byte-level vocabularies, back to the byte.
fn byte_level_table() -> &'static std::collections::HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                if printable(b) {
                    (char::from(b), b)
                } else {
                    let c = char::from_u32(next).expect("a code point below 512");
                    next += 1;
                    (c, b)
                }
            })
            .collect()
    })
}

/// Bytes as readable text: whole UTF-8 characters as themselves, with marks for
/// whitespace and escapes for control characters and stray bytes (see
/// [`Tokenizer::readable`]).
pub fn readable_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                ' ' => out.push('␣'),
                '\n' => out.push('↵'),
                '\t' => out.push('⇥'),
                '\r' => out.push('␍'),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Pieces of about a mebibyte, each ending after a newline followed by a non-space.
fn corpus_pieces(text: &str) -> impl Iterator<Item = &str> {
    const PIECE: usize = 1 << 20;
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut end = rest.len();
        let mut i = PIECE;
        while i < bytes.len() {
            if bytes[i - 1] == b'\n' && !bytes[i].is_ascii_whitespace() && rest.is_char_boundary(i) {
                end = i;
                break;
            }
            i += 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_pieces_cover_the_text_and_end_where_tokens_cannot_join() {
        let line = "the cat sat on the mat\n  indented\n\nnext é\n";
        let text = line.repeat(100_000);
        let pieces: Vec<&str> = corpus_pieces(&text).collect();
        assert!(pieces.len() > 2, "{} pieces", pieces.len());
        assert_eq!(pieces.concat(), text);
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.ends_with('\n'));
        }
        for p in &pieces[1..] {
            assert!(!p.starts_with(char::is_whitespace));
        }
    }

    #[test]
    fn char_level_round_trips_and_rejects_unknown_characters() {
        let t = Tokenizer::char_level("hello world").unwrap();
        assert_eq!(t.vocab_size(), 8);
        let ids = t.encode("hello").unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "hello");
        let err = t.encode("hex").unwrap_err().to_string();
        assert!(err.contains("'x'"), "{err}");
    }

    #[test]
    fn char_level_truncates_and_saves() {
        let mut t = Tokenizer::char_level("abc").unwrap();
        t.set_max_length(Some(2)).unwrap();
        assert_eq!(t.encode("cba").unwrap(), vec![2, 1]);
        let dir = std::env::temp_dir().join(format!("tchlab-char-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.save(&dir.join("tokenizer.json")).unwrap();
        let back = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(back.encode("abc").unwrap(), vec![0, 1, 2]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
