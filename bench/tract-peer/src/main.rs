//! Times a model on tract (`tract-onnx`), for `sharc bench --peer tract`.
//!
//! `tract-peer MODEL --inputs i64:8x128,i64:8x128 [--iters N] [--warmup N]`
//! fixes each input's type and shape, optimises the model, runs it on inputs
//! filled with ones (as `sharc bench` does) and prints one JSON line with the
//! median and p90 latency in milliseconds.

use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, format_err};

fn fact(spec: &str) -> TractResult<(DatumType, Vec<usize>)> {
    let (dt, dims) = spec.split_once(':').ok_or_else(|| format_err!("input spec '{spec}' is not TYPE:DxD"))?;
    let dt = match dt {
        "f32" => f32::datum_type(),
        "i64" => i64::datum_type(),
        "i32" => i32::datum_type(),
        "bool" => bool::datum_type(),
        other => bail!("unsupported input type {other}"),
    };
    let shape = if dims.is_empty() {
        vec![]
    } else {
        dims.split('x').map(|d| d.parse::<usize>().map_err(|e| format_err!("bad dim '{d}': {e}"))).collect::<Result<_, _>>()?
    };
    Ok((dt, shape))
}

fn ones(dt: DatumType, shape: &[usize]) -> TractResult<Tensor> {
    let t = tract_ndarray::ArrayD::<f32>::ones(tract_ndarray::IxDyn(shape));
    let t: Tensor = t.into();
    t.cast_to_dt(dt).map(|c| c.into_owned())
}

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = args.get(1).ok_or_else(|| format_err!("usage: tract-peer MODEL --inputs SPEC"))?;
    let mut specs = Vec::new();
    let (mut iters, mut warmup) = (20usize, 3usize);
    let mut i = 2;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--inputs" => specs = v.split(',').map(fact).collect::<TractResult<Vec<_>>>()?,
            "--iters" => iters = v.parse()?,
            "--warmup" => warmup = v.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    let t0 = Instant::now();
    let mut model = tract_onnx::onnx().model_for_path(model_path)?;
    for (k, (dt, shape)) in specs.iter().enumerate() {
        model = model.with_input_fact(k, InferenceFact::dt_shape(*dt, shape.clone()))?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs: TVec<TValue> =
        specs.iter().map(|(dt, s)| ones(*dt, s).map(|t| t.into())).collect::<TractResult<_>>()?;
    for _ in 0..warmup {
        plan.run(inputs.clone())?;
    }
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        plan.run(inputs.clone())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"median_ms\": {}, \"p90_ms\": {}, \"min_ms\": {}, \"load_ms\": {load_ms}, \"threads\": 1}}",
        at(0.5),
        at(0.9),
        times[0]
    );
    Ok(())
}
