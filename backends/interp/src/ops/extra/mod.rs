//! Family `extra` of the interpreter's ops: attention and its companions,
//! recurrent layers, losses, signal processing, detection, strings, random
//! generators, and the `ai.onnx.ml` / `ai.onnx.preview.training` ops the
//! ONNX node suite exercises.

mod attention;
mod common;
mod detection;
mod loss;
mod ml;
mod random;
mod rnn;
mod signal;
mod strings;
#[cfg(test)]
mod testutil;
mod training;

use super::{OpContext, OpResult};
use sharc_ir::{Op, Value};

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], cx: &OpContext) -> OpResult {
    Some(match op {
        Op::Attention(a) => attention::attention(a, inputs, cx.num_outputs),
        Op::RotaryEmbedding(a) => attention::rotary_embedding(a, inputs),
        Op::SwiGLU(a) => attention::swiglu(a, inputs),
        Op::LinearAttention(a) => attention::linear_attention(a, inputs),
        Op::CausalConvWithState(a) => attention::causal_conv_with_state(a, inputs),
        Op::RNN(a) => rnn::recurrent(rnn::Cell::Rnn, a, inputs, cx.num_outputs),
        Op::GRU(a) => rnn::recurrent(rnn::Cell::Gru, a, inputs, cx.num_outputs),
        Op::LSTM(a) => rnn::recurrent(rnn::Cell::Lstm, a, inputs, cx.num_outputs),
        Op::NegativeLogLikelihoodLoss(a) => loss::nll_loss(a, inputs),
        Op::SoftmaxCrossEntropyLoss(a) => loss::softmax_cross_entropy(a, inputs, cx.num_outputs),
        Op::DFT(a) => signal::dft_op(a, inputs),
        Op::STFT(a) => signal::stft(a, inputs),
        Op::HannWindow(a) => signal::window_op(signal::WindowKind::Hann, a, inputs),
        Op::HammingWindow(a) => signal::window_op(signal::WindowKind::Hamming, a, inputs),
        Op::BlackmanWindow(a) => signal::window_op(signal::WindowKind::Blackman, a, inputs),
        Op::MelWeightMatrix(a) => signal::mel_weight_matrix(a, inputs),
        Op::RoiAlign(a) => detection::roi_align(a, inputs),
        Op::NonMaxSuppression(a) => detection::non_max_suppression(a, inputs),
        Op::StringConcat => strings::string_concat(inputs),
        Op::StringSplit(a) => strings::string_split(a, inputs),
        Op::StringNormalizer(a) => strings::string_normalizer(a, inputs),
        Op::RegexFullMatch(a) => strings::regex_full_match(a, inputs),
        Op::TfIdfVectorizer(a) => strings::tfidf_vectorizer(a, inputs),
        Op::RandomUniform(a) => random::random_uniform(a),
        Op::RandomNormal(a) => random::random_normal(a),
        Op::RandomUniformLike(a) => random::random_uniform_like(a, inputs),
        Op::RandomNormalLike(a) => random::random_normal_like(a, inputs),
        Op::Bernoulli(a) => random::bernoulli(a, inputs),
        Op::Multinomial(a) => random::multinomial(a, inputs),
        Op::Opaque(o) if o.domain == "ai.onnx.ml" => return ml::run(o, inputs),
        Op::Opaque(o) if o.domain == "ai.onnx.preview" && o.op_type == "FlexAttention" => {
            attention::flex_attention(o, inputs)
        }
        Op::Opaque(o) if o.domain == "ai.onnx.preview.training" => return training::run(o, inputs),
        _ => return None,
    })
}
