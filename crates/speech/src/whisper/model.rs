//! The whisper network (encoder and decoder) on candle tensors, built straight
//! from CTranslate2's variable names, with f16 weights widened to f32 once at
//! load. Written here rather than taken from `candle-transformers` so that the
//! decoder keeps a self-attention KV cache (one token per step) and so that
//! the encoder runs on only as many frames as the audio has.
//!
//! CTranslate2 names (per layer `i`):
//! - `encoder/conv{1,2}/{weight,bias}`, `encoder/position_encodings/encodings`,
//!   `encoder/layer_i/self_attention/{layer_norm,linear_0 (fused qkv),linear_1 (out)}`,
//!   `encoder/layer_i/ffn/{layer_norm,linear_0,linear_1}`, `encoder/layer_norm`;
//! - `decoder/embeddings/weight` (also the output projection),
//!   `decoder/position_encodings/encodings`,
//!   `decoder/layer_i/self_attention/...` as above,
//!   `decoder/layer_i/attention/{layer_norm,linear_0 (q),linear_1 (fused kv),linear_2 (out)}`,
//!   `decoder/layer_i/ffn/...`, `decoder/layer_norm`.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::Linear;

use super::ct2::{Ct2Dtype, Ct2Model};

type CResult<T> = candle_core::Result<T>;

/// Sizes read from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n_mels: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Encoder positions (1500: 30 s of audio).
    pub audio_ctx: usize,
    /// Decoder positions (448).
    pub text_ctx: usize,
    pub vocab: usize,
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, 1e-5)
    }
}

struct SelfAttention {
    norm: LayerNorm,
    qkv: Linear,
    out: Linear,
}

struct CrossAttention {
    norm: LayerNorm,
    q: Linear,
    kv: Linear,
    out: Linear,
}

struct Mlp {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let h = self.fc1.forward(&self.norm.forward(x)?)?.gelu_erf()?;
        self.fc2.forward(&h)
    }
}

struct EncoderLayer {
    attn: SelfAttention,
    mlp: Mlp,
}

struct DecoderLayer {
    attn: SelfAttention,
    cross: CrossAttention,
    mlp: Mlp,
}

/// The network. Immutable after load: per-utterance state lives in
/// [`DecoderState`], so one `Network` serves every session at once.
pub struct Network {
    pub dims: Dims,
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    enc_pos: Tensor,
    enc_layers: Vec<EncoderLayer>,
    enc_norm: LayerNorm,
    /// Token embeddings, also the output projection; kept in f16 (as in the
    /// file): the logits matmul reads all 51864 rows every step, and half the
    /// bytes makes it faster (by how much: `benches/whisper.rs`).
    embed: Tensor,
    dec_pos: Tensor,
    dec_layers: Vec<DecoderLayer>,
    dec_norm: LayerNorm,
}

/// Keys and values for one decoding: the cross-attention ones computed once
/// from the encoder output, the self-attention ones grown a token at a time.
pub struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens seen so far (the next token's position).
    offset: usize,
}

impl DecoderState {
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// Splits `[b, n, h*d]` into heads `[b, h, n, d]`.
fn heads(x: &Tensor, n_heads: usize) -> CResult<Tensor> {
    let (b, n, c) = x.dims3()?;
    x.reshape((b, n, n_heads, c / n_heads))?
        .transpose(1, 2)?
        .contiguous()
}

fn merge_heads(x: &Tensor) -> CResult<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

/// softmax(q kᵀ / √d + mask) v over `[b, h, n, d]` tensors.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> CResult<Tensor> {
    let d = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

impl Network {
    /// The encoder on `mel` (`[1, n_mels, frames]`, frames ≤ 2 × audio_ctx):
    /// returns `[1, ceil(frames / 2), d_model]`. Positional encodings are
    /// sliced to the length, so a short clip costs only its own frames.
    pub fn encode(&self, mel: &Tensor) -> CResult<Tensor> {
        let x = mel
            .conv1d(&self.conv1.0, 1, 1, 1, 1)?
            .broadcast_add(&self.conv1.1.reshape((1, (), 1))?)?
            .gelu_erf()?;
        let x = x
            .conv1d(&self.conv2.0, 1, 2, 1, 1)?
            .broadcast_add(&self.conv2.1.reshape((1, (), 1))?)?
            .gelu_erf()?;
        let x = x.transpose(1, 2)?;
        let n = x.dim(1)?;
        if n > self.dims.audio_ctx {
            candle_core::bail!(
                "audio of {n} positions exceeds the window of {}",
                self.dims.audio_ctx
            );
        }
        let mut x = x.broadcast_add(&self.enc_pos.narrow(0, 0, n)?)?;
        for layer in &self.enc_layers {
            let h = layer.attn.norm.forward(&x)?;
            let qkv = layer.attn.qkv.forward(&h)?;
            let c = self.dims.d_model;
            let q = heads(&qkv.narrow(2, 0, c)?, self.dims.n_heads)?;
            let k = heads(&qkv.narrow(2, c, c)?, self.dims.n_heads)?;
            let v = heads(&qkv.narrow(2, 2 * c, c)?, self.dims.n_heads)?;
            let a = merge_heads(&attention(&q, &k, &v, None)?)?;
            x = (x + layer.attn.out.forward(&a)?)?;
            x = (&x + layer.mlp.forward(&x)?)?;
        }
        self.enc_norm.forward(&x)
    }

    /// Prepares a decoding against encoder output `audio` (`[1, n, d]`).
    pub fn start(&self, audio: &Tensor) -> CResult<DecoderState> {
        let c = self.dims.d_model;
        let mut cross = Vec::with_capacity(self.dec_layers.len());
        for layer in &self.dec_layers {
            let kv = layer.cross.kv.forward(audio)?;
            let k = heads(&kv.narrow(2, 0, c)?, self.dims.n_heads)?;
            let v = heads(&kv.narrow(2, c, c)?, self.dims.n_heads)?;
            cross.push((k, v));
        }
        Ok(DecoderState {
            cross,
            cache: vec![None; self.dec_layers.len()],
            offset: 0,
        })
    }

    /// Feeds `tokens` (appended after those already fed) and returns the
    /// final hidden states `[1, tokens.len(), d]`.
    pub fn decode(&self, state: &mut DecoderState, tokens: &[u32]) -> CResult<Tensor> {
        let n = tokens.len();
        if state.offset + n > self.dims.text_ctx {
            candle_core::bail!("decoder context of {} tokens is full", self.dims.text_ctx);
        }
        let device = self.embed.device();
        let ids = Tensor::new(tokens, device)?;
        let x = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        let pos = self.dec_pos.narrow(0, state.offset, n)?;
        let mut x = (x + pos)?.unsqueeze(0)?;
        let offset = state.offset;
        let total = offset + n;
        let mask = if n > 1 {
            let m: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > offset + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (n, total), device)?)
        } else {
            None
        };
        let c = self.dims.d_model;
        for (i, layer) in self.dec_layers.iter().enumerate() {
            let h = layer.attn.norm.forward(&x)?;
            let qkv = layer.attn.qkv.forward(&h)?;
            let q = heads(&qkv.narrow(2, 0, c)?, self.dims.n_heads)?;
            let mut k = heads(&qkv.narrow(2, c, c)?, self.dims.n_heads)?;
            let mut v = heads(&qkv.narrow(2, 2 * c, c)?, self.dims.n_heads)?;
            if let Some((pk, pv)) = &state.cache[i] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            let a = merge_heads(&attention(&q, &k, &v, mask.as_ref())?)?;
            state.cache[i] = Some((k, v));
            x = (x + layer.attn.out.forward(&a)?)?;

            let h = layer.cross.norm.forward(&x)?;
            let q = heads(&layer.cross.q.forward(&h)?, self.dims.n_heads)?;
            let (ck, cv) = &state.cross[i];
            let a = merge_heads(&attention(&q, ck, cv, None)?)?;
            x = (x + layer.cross.out.forward(&a)?)?;

            x = (&x + layer.mlp.forward(&x)?)?;
        }
        state.offset = total;
        self.dec_norm.forward(&x)
    }

    /// Logits over the vocabulary for hidden states `[m, d]` → `[m, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> CResult<Tensor> {
        hidden
            .to_dtype(DType::F16)?
            .matmul(&self.embed.t()?)?
            .to_dtype(DType::F32)
    }
}

// ---------------------------------------------------------------- loading

/// Loads the network; the error is a reason for `SpeechError::InvalidModel`.
pub fn load(ct2: &Ct2Model) -> Result<Network, String> {
    if !ct2.spec.starts_with("Whisper") {
        return Err(format!("spec is {:?}, not WhisperSpec", ct2.spec));
    }
    let device = Device::Cpu;
    let tensor = |name: &str, shape: &[usize]| -> Result<Tensor, String> {
        let var = ct2
            .get(name)
            .ok_or_else(|| format!("variable {name} is missing"))?;
        if var.shape != shape {
            return Err(format!(
                "variable {name} has shape {:?}, expected {shape:?}",
                var.shape
            ));
        }
        let dtype = match var.dtype {
            Ct2Dtype::F32 => DType::F32,
            Ct2Dtype::F16 => DType::F16,
            Ct2Dtype::Bf16 => DType::BF16,
            other => return Err(format!("variable {name} has dtype {other:?}, not a float")),
        };
        Tensor::from_raw_buffer(&var.data, dtype, shape, &device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| format!("variable {name}: {e}"))
    };
    let shape_of = |name: &str| -> Result<Vec<usize>, String> {
        ct2.get(name)
            .map(|v| v.shape.clone())
            .ok_or_else(|| format!("variable {name} is missing"))
    };
    let scalar = |name: &str| -> Option<i64> { ct2.get(name).and_then(|v| v.scalar_i64()) };

    let conv1_shape = shape_of("encoder/conv1/weight")?;
    let [d_model, n_mels, 3] = conv1_shape[..] else {
        return Err(format!("encoder/conv1/weight has shape {conv1_shape:?}"));
    };
    let enc_pos_shape = shape_of("encoder/position_encodings/encodings")?;
    let dec_pos_shape = shape_of("decoder/position_encodings/encodings")?;
    let embed_shape = shape_of("decoder/embeddings/weight")?;
    let (Some(&audio_ctx), Some(&text_ctx), Some(&vocab)) = (
        enc_pos_shape.first(),
        dec_pos_shape.first(),
        embed_shape.first(),
    ) else {
        return Err("position encodings or embeddings have no rows".into());
    };
    let n_heads = scalar("encoder/num_heads")
        .or_else(|| scalar("decoder/num_heads"))
        .unwrap_or(6);
    if n_heads <= 0 || d_model % n_heads as usize != 0 {
        return Err(format!("{n_heads} heads do not divide {d_model}"));
    }
    if scalar("decoder/pre_norm") == Some(0) || scalar("decoder/scale_embeddings") == Some(1) {
        return Err("decoder is not pre-norm without embedding scaling".into());
    }
    let count = |prefix: &str| {
        (0..)
            .take_while(|i| {
                ct2.get(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
                    .is_some()
            })
            .count()
    };
    let dims = Dims {
        n_mels,
        d_model,
        n_heads: n_heads as usize,
        encoder_layers: count("encoder"),
        decoder_layers: count("decoder"),
        audio_ctx,
        text_ctx,
        vocab,
    };
    if dims.encoder_layers == 0 || dims.decoder_layers == 0 {
        return Err("no encoder or decoder layers".into());
    }
    let d = d_model;
    let norm = |p: &str| -> Result<LayerNorm, String> {
        Ok(LayerNorm {
            gamma: tensor(&format!("{p}/gamma"), &[d])?,
            beta: tensor(&format!("{p}/beta"), &[d])?,
        })
    };
    let linear = |p: &str, out: usize, inp: usize| -> Result<Linear, String> {
        let w = tensor(&format!("{p}/weight"), &[out, inp])?;
        let b = match ct2.get(&format!("{p}/bias")) {
            Some(_) => Some(tensor(&format!("{p}/bias"), &[out])?),
            None => None,
        };
        Ok(Linear::new(w, b))
    };
    let ffn_dim = shape_of("encoder/layer_0/ffn/linear_0/weight")?
        .first()
        .copied()
        .unwrap_or(4 * d);
    let mlp = |p: &str| -> Result<Mlp, String> {
        Ok(Mlp {
            norm: norm(&format!("{p}/layer_norm"))?,
            fc1: linear(&format!("{p}/linear_0"), ffn_dim, d)?,
            fc2: linear(&format!("{p}/linear_1"), d, ffn_dim)?,
        })
    };
    let self_attn = |p: &str| -> Result<SelfAttention, String> {
        Ok(SelfAttention {
            norm: norm(&format!("{p}/layer_norm"))?,
            qkv: linear(&format!("{p}/linear_0"), 3 * d, d)?,
            out: linear(&format!("{p}/linear_1"), d, d)?,
        })
    };
    let mut enc_layers = Vec::new();
    for i in 0..dims.encoder_layers {
        let p = format!("encoder/layer_{i}");
        enc_layers.push(EncoderLayer {
            attn: self_attn(&format!("{p}/self_attention"))?,
            mlp: mlp(&format!("{p}/ffn"))?,
        });
    }
    let mut dec_layers = Vec::new();
    for i in 0..dims.decoder_layers {
        let p = format!("decoder/layer_{i}");
        dec_layers.push(DecoderLayer {
            attn: self_attn(&format!("{p}/self_attention"))?,
            cross: CrossAttention {
                norm: norm(&format!("{p}/attention/layer_norm"))?,
                q: linear(&format!("{p}/attention/linear_0"), d, d)?,
                kv: linear(&format!("{p}/attention/linear_1"), 2 * d, d)?,
                out: linear(&format!("{p}/attention/linear_2"), d, d)?,
            },
            mlp: mlp(&format!("{p}/ffn"))?,
        });
    }
    Ok(Network {
        dims,
        conv1: (
            tensor("encoder/conv1/weight", &[d, n_mels, 3])?,
            tensor("encoder/conv1/bias", &[d])?,
        ),
        conv2: (
            tensor("encoder/conv2/weight", &[d, d, 3])?,
            tensor("encoder/conv2/bias", &[d])?,
        ),
        enc_pos: tensor("encoder/position_encodings/encodings", &[audio_ctx, d])?,
        enc_layers,
        enc_norm: norm("encoder/layer_norm")?,
        embed: tensor("decoder/embeddings/weight", &[vocab, d])?
            .to_dtype(DType::F16)
            .map_err(|e| e.to_string())?,
        dec_pos: tensor("decoder/position_encodings/encodings", &[text_ctx, d])?,
        dec_layers,
        dec_norm: norm("decoder/layer_norm")?,
    })
}
