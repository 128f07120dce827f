//! Times a model on tract (`tract-onnx`), for `sharc bench --peer tract`, and
//! checks tract's outputs against reference outputs.
//!
//! ```text
//! tract-peer MODEL --inputs i64:8x128,i64:8x128 [--iters N] [--warmup N] [--threads N]
//! tract-peer MODEL --data REF.safetensors [--rows N] [--check] [--tol X] ...
//! ```
//!
//! Each input's type and shape is fixed before tract analyses the model
//! (either from `--inputs`, with inputs filled with ones as `sharc bench`
//! does, or from the tensors of a `--data` file named like the graph's
//! inputs), the model is optimised, run and timed, and one JSON line is
//! printed with the median and p90 latency in milliseconds. With `--check`,
//! every graph output that the data file also holds (onnxruntime's
//! reference, say) is compared with tract's and the largest absolute
//! difference is reported (an empty list when the file holds no output);
//! the peer fails when it exceeds `--tol`, so a timing is never reported
//! for a model tract computes wrongly.
//!
//! `--threads N` lets tract use up to N threads: the warm-up tries one
//! thread and N, and the timed runs use the faster (`threads` in the JSON
//! says which; `warmup_min_ms_by_threads` what each took).

use safetensors::{Dtype, SafeTensors};
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, ensure, format_err};

/// What the command line asked for.
struct Args {
    model: String,
    specs: Vec<(DatumType, Vec<usize>)>,
    data: Option<String>,
    rows: Option<usize>,
    check: bool,
    tol: f32,
    iters: usize,
    warmup: usize,
    threads: usize,
}

const USAGE: &str = "usage: tract-peer MODEL (--inputs TYPE:DxD,... | --data FILE [--rows N] [--check] [--tol X]) \
                     [--iters N] [--warmup N] [--threads N]";

fn parse_args() -> TractResult<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let model = argv.first().filter(|m| !m.starts_with("--")).ok_or_else(|| format_err!("{USAGE}"))?.clone();
    let mut a = Args {
        model,
        specs: Vec::new(),
        data: None,
        rows: None,
        check: false,
        tol: 1e-3,
        iters: 20,
        warmup: 3,
        threads: 1,
    };
    let mut i = 1;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "--check" {
            a.check = true;
            i += 1;
            continue;
        }
        let v = argv.get(i + 1).ok_or_else(|| format_err!("{flag} needs a value ({USAGE})"))?;
        let num = |what: &str| v.parse::<usize>().map_err(|e| format_err!("{what} '{v}': {e}"));
        match flag {
            "--inputs" => a.specs = v.split(',').map(fact).collect::<TractResult<Vec<_>>>()?,
            "--data" => a.data = Some(v.clone()),
            "--rows" => a.rows = Some(num("--rows")?),
            "--tol" => a.tol = v.parse().map_err(|e| format_err!("--tol '{v}': {e}"))?,
            "--iters" => a.iters = num("--iters")?,
            "--warmup" => a.warmup = num("--warmup")?,
            "--threads" => a.threads = num("--threads")?.max(1),
            other => bail!("unknown argument {other} ({USAGE})"),
        }
        i += 2;
    }
    ensure!(a.specs.is_empty() != a.data.is_none(), "give exactly one of --inputs and --data ({USAGE})");
    ensure!(!a.check || a.data.is_some(), "--check compares with the outputs in --data FILE");
    Ok(a)
}

/// Parses one `TYPE:DxDxD` input spec (`TYPE:` alone is a scalar).
fn fact(spec: &str) -> TractResult<(DatumType, Vec<usize>)> {
    let (dt, dims) = spec.split_once(':').ok_or_else(|| format_err!("input spec '{spec}' is not TYPE:DxD"))?;
    let dt = match dt {
        "f16" => f16::datum_type(),
        "f32" => f32::datum_type(),
        "f64" => f64::datum_type(),
        "i8" => i8::datum_type(),
        "i16" => i16::datum_type(),
        "i32" => i32::datum_type(),
        "i64" => i64::datum_type(),
        "u8" => u8::datum_type(),
        "u16" => u16::datum_type(),
        "u32" => u32::datum_type(),
        "u64" => u64::datum_type(),
        "bool" => bool::datum_type(),
        other => bail!("unsupported input type {other} in '{spec}'"),
    };
    let shape = if dims.is_empty() {
        vec![]
    } else {
        dims.split('x')
            .map(|d| d.parse::<usize>().map_err(|e| format_err!("bad dim '{d}' in '{spec}': {e}")))
            .collect::<Result<_, _>>()?
    };
    Ok((dt, shape))
}

fn ones(dt: DatumType, shape: &[usize]) -> TractResult<Tensor> {
    let t: Tensor = tract_ndarray::ArrayD::<f32>::ones(tract_ndarray::IxDyn(shape)).into();
    t.cast_to_dt(dt).map(|c| c.into_owned())
}

/// Reads little-endian elements of `N` bytes each.
fn le<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
}

/// The first `rows` rows (along axis 0; all of them when `None`) of a
/// safetensors tensor, as a tract tensor.
fn from_safetensors(name: &str, t: &safetensors::tensor::TensorView, rows: Option<usize>) -> TractResult<Tensor> {
    let mut shape = t.shape().to_vec();
    let mut bytes = t.data();
    if let Some(rows) = rows {
        let Some(first) = shape.first_mut() else { bail!("'{name}' is a scalar; --rows needs a leading axis") };
        ensure!(rows <= *first, "'{name}' has {} rows, fewer than --rows {rows}", *first);
        if let Some(row_bytes) = bytes.len().checked_div(*first) {
            bytes = &bytes[..row_bytes * rows];
        }
        *first = rows;
    }
    Ok(match t.dtype() {
        Dtype::F32 => Tensor::from_shape(&shape, &le(bytes, f32::from_le_bytes))?,
        Dtype::F64 => Tensor::from_shape(&shape, &le(bytes, f64::from_le_bytes))?,
        Dtype::I64 => Tensor::from_shape(&shape, &le(bytes, i64::from_le_bytes))?,
        Dtype::I32 => Tensor::from_shape(&shape, &le(bytes, i32::from_le_bytes))?,
        Dtype::F16 => Tensor::from_shape(&shape, &le(bytes, f16::from_le_bytes))?,
        Dtype::I16 => Tensor::from_shape(&shape, &le(bytes, i16::from_le_bytes))?,
        Dtype::I8 => Tensor::from_shape(&shape, &le(bytes, i8::from_le_bytes))?,
        Dtype::U8 => Tensor::from_shape(&shape, bytes)?,
        Dtype::BOOL => Tensor::from_shape(&shape, &bytes.iter().map(|b| *b != 0).collect::<Vec<_>>())?,
        other => bail!("'{name}' has type {other:?}, which this peer does not read"),
    })
}

/// The largest absolute difference between tract's output and a reference
/// (infinite when a value is NaN on one side only or the shapes differ).
fn max_abs_diff(name: &str, got: &Tensor, want: &Tensor) -> TractResult<f32> {
    ensure!(
        got.shape() == want.shape(),
        "output '{name}': tract gives {:?}, the reference {:?}",
        got.shape(),
        want.shape()
    );
    let got = got.cast_to::<f32>()?;
    let want = want.cast_to::<f32>()?;
    let (g, w) = (got.to_plain_array_view::<f32>()?, want.to_plain_array_view::<f32>()?);
    Ok(g.iter().zip(w.iter()).fold(0f32, |m, (a, b)| {
        let d = if a.is_nan() && b.is_nan() { 0.0 } else { (a - b).abs() };
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    }))
}

/// Prints the error (or tract's panic, e.g. on an out-of-range index) as one
/// line on stderr: `sharc bench` quotes the last line when a peer fails.
fn main() -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|_| {}));
    let message = match std::panic::catch_unwind(run) {
        Ok(Ok(())) => return std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => format!("{e:#}"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            format!("tract panicked: {what}")
        }
    };
    eprintln!("error: {}", message.replace('\n', " "));
    std::process::ExitCode::FAILURE
}

fn run() -> TractResult<()> {
    let a = parse_args()?;
    let t0 = Instant::now();
    let mut model = tract_onnx::onnx().model_for_path(&a.model)?;
    let input_names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let output_names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();

    let bytes = match &a.data {
        Some(p) => std::fs::read(p).map_err(|e| format_err!("cannot read {p}: {e}"))?,
        None => Vec::new(),
    };
    let data = match &a.data {
        Some(p) => Some(SafeTensors::deserialize(&bytes).map_err(|e| format_err!("{p} is not safetensors: {e}"))?),
        None => None,
    };
    let inputs: Vec<Tensor> = match &data {
        Some(st) => input_names
            .iter()
            .map(|n| {
                let t = st.tensor(n).map_err(|_| format_err!("the data file has no tensor for input '{n}'"))?;
                from_safetensors(n, &t, a.rows)
            })
            .collect::<TractResult<_>>()?,
        None => {
            ensure!(
                a.specs.len() == input_names.len(),
                "the model has {} inputs ({}), --inputs gives {}",
                input_names.len(),
                input_names.join(", "),
                a.specs.len()
            );
            a.specs.iter().map(|(dt, s)| ones(*dt, s)).collect::<TractResult<_>>()?
        }
    };
    for (k, t) in inputs.iter().enumerate() {
        model = model.with_input_fact(k, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into_tvalue()).collect();

    // One state, reused: what a server holding the model would do.
    let mut state = plan.spawn()?;
    let mut check = Vec::new();
    if a.check {
        let outs = state.run(inputs.clone())?;
        let st = data.as_ref().ok_or_else(|| format_err!("--check needs --data"))?;
        for (name, got) in output_names.iter().zip(outs.iter()) {
            let Ok(r) = st.tensor(name) else { continue };
            let want = from_safetensors(name, &r, a.rows)?;
            let d = max_abs_diff(name, got, &want)?;
            ensure!(
                d <= a.tol,
                "output '{name}': tract differs from the reference by {d:e} (more than --tol {})",
                a.tol
            );
            check.push(serde_json::json!({"output": name, "max_abs_diff": d, "shape": got.shape()}));
        }
        if check.is_empty() {
            // Not an error: a file of inputs alone is still fine to time on.
            eprintln!("note: --check: the data file holds none of the outputs ({})", output_names.join(", "));
        }
    }
    // tract threads only its matrix products, on a rayon pool that the
    // calling thread waits for. With small products, or cores shared with
    // other work, the pool can make tract slower than one thread (twice as
    // slow on gpt-tiny b8x64 on two busy cores). To compare with tract at
    // its best, the warm-up runs try one thread and `--threads`, and the
    // timed runs use whichever was faster.
    let mut tried = serde_json::Map::new();
    let mut best: Option<(f64, usize, multithread::Executor)> = None;
    let candidates = std::iter::once((1, multithread::Executor::SingleThread))
        .chain((a.threads > 1).then(|| (a.threads, multithread::Executor::multithread(a.threads))));
    for (n, executor) in candidates {
        let mut fastest = f64::INFINITY;
        for _ in 0..a.warmup.max(2) {
            let t = Instant::now();
            multithread::multithread_tract_scope(executor.clone(), || state.run(inputs.clone()))?;
            fastest = fastest.min(t.elapsed().as_secs_f64() * 1e3);
        }
        tried.insert(n.to_string(), fastest.into());
        if best.as_ref().is_none_or(|(ms, _, _)| fastest < *ms) {
            best = Some((fastest, n, executor));
        }
    }
    let (_, threads, executor) = best.ok_or_else(|| format_err!("no thread count was tried"))?;
    let mut times = Vec::new();
    for _ in 0..a.iters.max(1) {
        let t = Instant::now();
        multithread::multithread_tract_scope(executor.clone(), || state.run(inputs.clone()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let mut out = serde_json::json!({
        "median_ms": at(0.5),
        "p90_ms": at(0.9),
        "min_ms": times[0],
        "load_ms": load_ms,
        "threads": threads,
        "warmup_min_ms_by_threads": tried,
    });
    if a.check {
        out["check"] = check.into();
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_give_type_and_shape() {
        assert_eq!(fact("i64:8x128").unwrap(), (i64::datum_type(), vec![8, 128]));
        assert_eq!(fact("f32:").unwrap(), (f32::datum_type(), vec![]));
        assert!(fact("i64").unwrap_err().to_string().contains("TYPE:DxD"));
        assert!(fact("q8:2").unwrap_err().to_string().contains("unsupported input type q8"));
        assert!(fact("f32:2xz").unwrap_err().to_string().contains("bad dim 'z'"));
    }

    /// A safetensors file holding `ids`, i64 [3, 2] = 0..6.
    fn ids_file() -> Vec<u8> {
        let data: Vec<u8> = (0i64..6).flat_map(i64::to_le_bytes).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::I64, vec![3, 2], &data).unwrap();
        safetensors::serialize([("ids", view)], None).unwrap()
    }

    #[test]
    fn rows_take_the_leading_rows() {
        let bytes = ids_file();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("ids").unwrap();
        let two = from_safetensors("ids", &t, Some(2)).unwrap();
        assert_eq!(two, Tensor::from_shape(&[2, 2], &[0i64, 1, 2, 3]).unwrap());
        let all = from_safetensors("ids", &t, None).unwrap();
        assert_eq!(all, Tensor::from_shape(&[3, 2], &[0i64, 1, 2, 3, 4, 5]).unwrap());
        let err = from_safetensors("ids", &t, Some(4)).unwrap_err().to_string();
        assert!(err.contains("3 rows, fewer than --rows 4"), "{err}");
    }

    #[test]
    fn diffs_count_nan_and_shape_mismatches() {
        let a = Tensor::from_shape(&[3], &[1f32, 2.0, f32::NAN]).unwrap();
        let b = Tensor::from_shape(&[3], &[1.5f32, 2.0, f32::NAN]).unwrap();
        assert_eq!(max_abs_diff("y", &a, &b).unwrap(), 0.5);
        let c = Tensor::from_shape(&[3], &[1f32, 2.0, 3.0]).unwrap();
        assert_eq!(max_abs_diff("y", &a, &c).unwrap(), f32::INFINITY);
        let d = Tensor::from_shape(&[1, 3], &[1f32, 2.0, 3.0]).unwrap();
        assert!(max_abs_diff("y", &c, &d).unwrap_err().to_string().contains("output 'y'"));
    }
}
