//! `sharc run`: run a model on inputs from a file (or generated ones).

use super::backend::{Backend, Target, Tuning};
use sharc::Error;
use sharc::data::{TensorFile, read_safetensors, write_safetensors};
use sharc::ir::{DType, Dim, Graph, Tensor, Type, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `sharc run`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .sharc).
    model: PathBuf,
    /// Inputs as a safetensors file whose tensor names are the graph's input names.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Without --inputs: values for symbolic dims, e.g. `batch=1,seq=8`.
    #[arg(long, value_delimiter = ',')]
    shape: Vec<String>,
    /// Without --inputs: fill generated inputs with ones or zeros.
    #[arg(long, default_value = "ones", value_parser = ["ones", "zeros"])]
    fill: String,
    /// Where to write the outputs (safetensors, keyed by graph output names).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Reference outputs (safetensors keyed by output name): print the max
    /// absolute difference of each output and fail if any exceeds --tolerance.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// The largest absolute difference --expect accepts.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Which backend runs the model: the reference interpreter, or compiled
    /// code from the Cranelift or MLIR backend (compiled for the input shapes).
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    backend: Backend,
    /// Where the backend runs the model: the CPU, or an NVIDIA GPU (`cuda`,
    /// MLIR backend only, in a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    target: Target,
    /// Run the model this many times and report the median and the first
    /// run's time (the first includes one-time costs: a GPU's driver moves
    /// the weights to its memory then). Outputs are those of the last run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

pub fn run(a: Args) -> Result<(), Error> {
    if let Some(out) = &a.output {
        sharc::io::check_output_path(out)?;
    }
    let g = sharc::model::load(&a.model)?;
    let inputs = match &a.inputs {
        Some(p) => inputs_from_file(&g, p)?,
        None => generated_inputs(&g, &parse_shape(&a.shape)?, a.fill == "ones")?,
    };
    let eval_err = |e| Error::Eval { model: a.model.clone(), source: e };
    let prepared = a.backend.prepare_on(a.target, &g, &inputs, &Tuning::default()).map_err(eval_err)?;
    for line in prepared.describe() {
        eprintln!("{line}");
    }
    let mut times = Vec::with_capacity(a.runs as usize);
    let mut outputs = Vec::new();
    for _ in 0..a.runs {
        let start = std::time::Instant::now();
        outputs = prepared.run(&inputs).map_err(eval_err)?;
        times.push(start.elapsed());
    }
    let first = times[0];
    times.sort();
    let median = times[times.len() / 2];
    let backend = match a.target {
        Target::Cpu => a.backend.name().to_string(),
        t => format!("{} ({})", a.backend.name(), t.name()),
    };
    let mut file = TensorFile::default();
    for (o, v) in g.outputs().iter().zip(outputs) {
        match v {
            Value::Tensor(t) => {
                println!("{}: {}", o.name, summary(&t));
                file.tensors.insert(o.name.clone(), t);
            }
            other => println!("{}: {} (not written)", o.name, other.describe()),
        }
    }
    if a.runs == 1 {
        eprintln!("ran in {:.1} ms on {backend}", first.as_secs_f64() * 1e3);
    } else {
        eprintln!(
            "ran {} times on {backend}: median {:.3} ms, first {:.3} ms",
            a.runs,
            median.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3
        );
    }
    if let Some(out) = &a.output {
        write_safetensors(out, &file)?;
    }
    if let Some(reference) = &a.expect {
        compare(&file, reference, a.tolerance)?;
    }
    Ok(())
}

/// Compares outputs with reference tensors of the same names.
fn compare(got: &TensorFile, reference: &Path, tolerance: f64) -> Result<(), Error> {
    let want = read_safetensors(reference)?;
    let mut worst = 0.0f64;
    for (name, t) in &got.tensors {
        let w = want.get(name, reference)?;
        if w.shape() != t.shape() {
            return Err(Error::Data {
                path: reference.to_path_buf(),
                message: format!("'{name}' has shape {:?} but the model produced {:?}", w.shape(), t.shape()),
            });
        }
        let (Some(a), Some(b)) = (t.to_f64_vec(), w.to_f64_vec()) else {
            println!("{name}: not numeric, compared for equality: {}", if t == w { "equal" } else { "DIFFERENT" });
            continue;
        };
        // f64::max drops NaN, so a NaN where the reference has a number
        // would count as no difference at all; count it as infinite instead.
        // NaN against NaN, and equal infinities, agree.
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| match (x.is_nan(), y.is_nan()) {
                (true, true) => 0.0,
                (false, false) if x == y => 0.0,
                (false, false) => (x - y).abs(),
                _ => f64::INFINITY,
            })
            .fold(0.0, f64::max);
        println!("{name}: max abs difference vs {} = {diff:.3e}", reference.display());
        worst = worst.max(diff);
    }
    if worst > tolerance {
        return Err(Error::Usage(format!(
            "outputs differ from the reference by {worst:.3e} > --tolerance {tolerance:e}"
        )));
    }
    Ok(())
}

fn summary(t: &Tensor) -> String {
    match t.to_f64_vec() {
        Some(v) if !v.is_empty() => {
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            format!("{}{:?} min {min:.6} max {max:.6} mean {mean:.6}", t.dtype(), t.shape())
        }
        _ => format!("{}{:?}", t.dtype(), t.shape()),
    }
}

pub(crate) fn inputs_from_file(g: &Graph, path: &Path) -> Result<Vec<Value>, Error> {
    let file = read_safetensors(path)?;
    // Tensors named like an output are expected values kept beside the
    // inputs (the same file serves --expect); any other name the graph does
    // not take is likely a misspelt or renamed input, so say it is unused.
    let known: std::collections::BTreeSet<&str> = g
        .input_values()
        .iter()
        .map(|&v| g.value_info(v).name.as_str())
        .chain(g.outputs().iter().map(|o| o.name.as_str()))
        .collect();
    let unused: Vec<&str> = file.tensors.keys().map(String::as_str).filter(|n| !known.contains(n)).collect();
    if !unused.is_empty() {
        eprintln!(
            "note: {}: tensors that are neither inputs nor outputs of the model are not used: {}",
            path.display(),
            unused.join(", ")
        );
    }
    let mut syms = BTreeMap::new();
    g.input_values()
        .iter()
        .map(|&v| {
            let name = &g.value_info(v).name;
            let t = file.get(name, path)?;
            if let Some(d) = g.value_type(v).dtype()
                && d != t.dtype()
            {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    message: format!("input '{name}' must be {d}, the file has {}", t.dtype()),
                });
            }
            check_shape(g, v, t.shape(), path, &mut syms)?;
            Ok(Value::Tensor(t.clone()))
        })
        .collect()
}

/// Checks a given input's shape against the shape the graph declares: the
/// interpreter would otherwise broadcast a wrong-shaped input and return a
/// plausible but wrong result. Symbolic dims must agree across inputs.
fn check_shape(
    g: &Graph,
    v: sharc::ir::ValueRef,
    got: &[usize],
    path: &Path,
    syms: &mut BTreeMap<String, (usize, String)>,
) -> Result<(), Error> {
    let name = &g.value_info(v).name;
    let Type::Tensor(tt) = g.value_type(v) else { return Ok(()) };
    let Some(shape) = &tt.shape else { return Ok(()) };
    let bad = |what: String| Error::Data {
        path: path.to_path_buf(),
        message: format!("input '{name}' {what}; the model declares {}", g.value_type(v)),
    };
    if shape.rank() != got.len() {
        return Err(bad(format!("has rank {} (shape {got:?})", got.len())));
    }
    for (i, (d, &n)) in shape.dims().iter().zip(got).enumerate() {
        match d {
            Dim::Fixed(f) if *f != n as u64 => return Err(bad(format!("has {n} in dim {i} (shape {got:?})"))),
            Dim::Sym(s) => match syms.get(s.as_str()) {
                Some((m, other)) if *m != n => {
                    return Err(bad(format!(
                        "has {s}={n} in dim {i}, but input '{other}' has {s}={m}; symbolic dims must agree"
                    )));
                }
                Some(_) => {}
                None => {
                    syms.insert(s.to_string(), (n, name.clone()));
                }
            },
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn parse_shape(items: &[String]) -> Result<BTreeMap<String, usize>, Error> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("--shape expects sym=value pairs like batch=1, got '{s}'")))?;
            let n = v
                .trim()
                .parse::<usize>()
                .map_err(|_| Error::Usage(format!("--shape: '{v}' is not a size (in '{s}')")))?;
            Ok((k.trim().to_string(), n))
        })
        .collect()
}

pub(crate) fn generated_inputs(g: &Graph, dims: &BTreeMap<String, usize>, ones: bool) -> Result<Vec<Value>, Error> {
    g.input_values()
        .iter()
        .map(|&v| {
            let vi = g.value_info(v);
            let Type::Tensor(tt) = &vi.ty else {
                return Err(Error::Usage(format!("input '{}' is a {}; give it with --inputs", vi.name, vi.ty)));
            };
            let shape = tt
                .shape
                .as_ref()
                .ok_or_else(|| Error::Usage(format!("input '{}' has unknown rank; give it with --inputs", vi.name)))?;
            let concrete: Vec<usize> = shape
                .dims()
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n as usize),
                    Dim::Sym(s) => dims.get(s).copied().ok_or_else(|| {
                        Error::Usage(format!("input '{}' has symbolic dim '{s}': give it with --shape {s}=N", vi.name))
                    }),
                })
                .collect::<Result<_, _>>()?;
            // A huge --shape would make the allocation panic or abort; say so.
            if concrete
                .iter()
                .try_fold(dtype_size(tt.dtype), |acc, &d| acc.checked_mul(d))
                .is_none_or(|b| b > isize::MAX as usize)
            {
                return Err(Error::Usage(format!(
                    "input '{}' would have shape {concrete:?}, too large to allocate; give smaller --shape values",
                    vi.name
                )));
            }
            if ones && !fills_ones(tt.dtype) {
                return Err(Error::Usage(format!(
                    "input '{}' is {}, which --fill ones cannot fill; use --fill zeros or give it with --inputs",
                    vi.name, tt.dtype
                )));
            }
            let zeros = Tensor::zeros(tt.dtype, &concrete);
            Ok(Value::Tensor(if ones { fill_ones(&zeros) } else { zeros }))
        })
        .collect()
}

fn fill_ones(t: &Tensor) -> Tensor {
    let n = t.len();
    let s = t.shape();
    match t.dtype() {
        DType::F32 => Tensor::from_vec(s, vec![1.0f32; n]),
        DType::F64 => Tensor::from_vec(s, vec![1.0f64; n]),
        DType::I64 => Tensor::from_vec(s, vec![1i64; n]),
        DType::I32 => Tensor::from_vec(s, vec![1i32; n]),
        DType::Bool => Tensor::from_vec(s, vec![true; n]),
        DType::U8 => Tensor::from_vec(s, vec![1u8; n]),
        DType::I8 => Tensor::from_vec(s, vec![1i8; n]),
        // `fills_ones` rules the other types out before we get here.
        _ => t.clone(),
    }
}

/// The dtypes [`fill_ones`] can fill; the others would silently stay zero.
fn fills_ones(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::I64 | DType::I32 | DType::Bool | DType::U8 | DType::I8)
}

/// An upper bound on the bytes of one element, for the size check only.
fn dtype_size(d: DType) -> usize {
    match d {
        DType::String => 24,
        _ => 8,
    }
}
