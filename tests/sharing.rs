//! Sharing passes on the real models: block analysis finds their layers and
//! names their weights, and `tie-layers` at full rank gives back the
//! original outputs.

mod common;

use sharc::data::read_safetensors;
use sharc::ir::{Evaluator, Graph, Value};
use sharc_passes::analysis::blocks::{BlockAnalysis, find_blocks};
use sharc_passes::analysis::calibration::make_batches;
use sharc_passes::sharing::tie_layers::{Init, Rank, TieLayersOptions, tie_layers};

fn load(name: &str) -> Option<(Graph, sharc::data::TensorFile)> {
    let shared = common::shared_dir()?;
    let model = shared.join("models").join(format!("{name}.onnx"));
    let data = shared.join("models").join(format!("{name}.data.safetensors"));
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let d = read_safetensors(&data).unwrap_or_else(|e| panic!("{e}"));
    Some((g, d))
}

fn roles(an: &BlockAnalysis) -> Vec<&str> {
    an.roles.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn minilm_has_six_encoder_layers() {
    let Some((g, _)) = load("minilm-l6") else { return };
    let an = find_blocks(&g).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", an.summary(&g));
    assert_eq!(an.len(), 6);
    assert_eq!(an.adds_per_block, 2);
    assert_eq!(
        roles(&an),
        [
            "q",
            "q.bias",
            "k",
            "k.bias",
            "v",
            "v.bias",
            "o",
            "o.bias",
            "norm1.gain",
            "norm1.bias",
            "ffn-in",
            "ffn-in.bias",
            "ffn-out",
            "ffn-out.bias",
            "norm2.gain",
            "norm2.bias"
        ]
    );
    // Post-norm: every block ends at its second LayerNormalization, and the
    // last one is the model's output.
    assert_eq!(an.blocks[5].output, g.outputs()[0].value);
    // The names were only lost to the exporter, not the roles: block 3's `k`
    // is layer 3's key projection (its bias keeps the name).
    let kb = &an.blocks[3].weights[an.role_index("k.bias").unwrap()];
    assert_eq!(g.weights.get(kb.id).unwrap().name, "m.encoder.layer.3.attention.self.key.bias");
    for i in 0..6 {
        assert_eq!(an.block_params(&g, i), 1_774_464);
    }
}

#[test]
fn gpt_tiny_has_six_decoder_blocks() {
    let Some((g, _)) = load("gpt-tiny") else { return };
    let an = find_blocks(&g).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", an.summary(&g));
    assert_eq!(an.len(), 6);
    assert_eq!(
        roles(&an),
        [
            "norm1.gain",
            "norm1.bias",
            "qkv",
            "qkv.bias",
            "o",
            "o.bias",
            "norm2.gain",
            "norm2.bias",
            "ffn-in",
            "ffn-in.bias",
            "ffn-out",
            "ffn-out.bias"
        ]
    );
    for (i, b) in an.blocks.iter().enumerate() {
        let w = &b.weights[an.role_index("ffn-out").unwrap()];
        assert_eq!(g.weights.get(w.id).unwrap().name, format!("m.transformer.h.{i}.mlp.c_proj.weight"));
    }
}

#[test]
fn moe_tiny_has_four_decoder_layers_with_experts() {
    let Some((g, _)) = load("moe-tiny") else { return };
    let an = find_blocks(&g).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", an.summary(&g));
    assert_eq!(an.len(), 4);
    let r = roles(&an);
    for want in
        ["q", "k", "v", "o", "router", "expert0.ffn-gate", "expert0.ffn-up", "expert0.ffn-out", "expert7.ffn-out"]
    {
        assert!(r.contains(&want), "missing role {want} in {r:?}");
    }
}

/// Runs the original and a tied copy on a few rows and returns the largest
/// absolute difference of the first output.
fn tie_error(name: &str, rows: usize, o: &TieLayersOptions) -> Option<f64> {
    let (g, data) = load(name)?;
    let mut tied = g.clone();
    let s = tie_layers(&mut tied, o).unwrap_or_else(|e| panic!("{e}"));
    println!("{s}");
    sharc::ir::verify(&tied).unwrap();
    let batches = make_batches(&g, &data.tensors, 0..rows, rows).unwrap();
    let ev = sharc::interp::Interpreter::new();
    let first = |g: &Graph, b: &[Value]| ev.evaluate(g, b).unwrap()[0].as_tensor().unwrap().to_f64_vec().unwrap();
    let (a, b) = (first(&g, &batches[0]), first(&tied, &batches[0]));
    Some(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
}

#[test]
fn gpt_tiny_tied_at_full_rank_is_the_original() {
    let o = TieLayersOptions { blocks: 3, init: Init::Average, rank: Rank::Full, ..Default::default() };
    let Some(err) = tie_error("gpt-tiny", 2, &o) else { return };
    println!("gpt-tiny, K=3 average full rank: max abs error {err:.3e}");
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn minilm_tied_at_full_rank_is_the_original() {
    let o = TieLayersOptions { blocks: 2, init: Init::Stepwise, rank: Rank::Full, ..Default::default() };
    let Some(err) = tie_error("minilm-l6", 1, &o) else { return };
    println!("minilm-l6, K=2 stepwise full rank: max abs error {err:.3e}");
    assert!(err <= 1e-4, "{err}");
}
