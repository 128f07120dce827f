//! String ops: `StringConcat`, `StringSplit`, `StringNormalizer`,
//! `RegexFullMatch` and `TfIdfVectorizer`.

use super::common::outputs;
use crate::util::{broadcast_shapes, tensor_arg};
use ndarray::IxDyn;
use sharc_ir::op::{CaseChange, RegexFullMatch, StringNormalizer, StringSplit, TfIdfVectorizer};
use sharc_ir::{EvalError, Tensor, TensorData, Value};
use std::collections::{HashMap, HashSet};

/// The strings of a string tensor, row-major.
fn strings<'a>(inputs: &'a [Option<Value>], i: usize, what: &str) -> Result<(Vec<&'a str>, Vec<usize>), EvalError> {
    let t = tensor_arg(inputs, i, what)?;
    match t.data() {
        TensorData::String(a) => Ok((a.iter().map(String::as_str).collect(), t.shape().to_vec())),
        _ => Err(EvalError::new(format!("{what} must be a string tensor, got {}", t.dtype()))),
    }
}

fn string_tensor(shape: &[usize], v: Vec<String>) -> Result<Tensor, EvalError> {
    Tensor::try_from_vec(shape, v).ok_or_else(|| EvalError::new("internal error: string count does not match shape"))
}

/// Runs `StringConcat`: elementwise concatenation with broadcasting.
pub(crate) fn string_concat(inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (x, xs) = strings(inputs, 0, "X")?;
    let (y, ys) = strings(inputs, 1, "Y")?;
    let shape = broadcast_shapes(&xs, &ys)?;
    let n: usize = shape.iter().product();
    // The source index of output element `o` in an input of shape `s`.
    let source = |s: &[usize], mut o: usize| -> usize {
        let mut idx = 0;
        let mut stride = 1;
        for k in (0..shape.len()).rev() {
            let coord = o % shape[k];
            o /= shape[k];
            let off = shape.len() - s.len();
            if k >= off {
                let d = s[k - off];
                if d != 1 {
                    idx += coord * stride;
                }
                stride *= d;
            }
        }
        idx
    };
    let out = (0..n).map(|o| format!("{}{}", x[source(&xs, o)], y[source(&ys, o)])).collect();
    outputs(vec![string_tensor(&shape, out)?])
}

/// Python's `str.isspace` set: Unicode white space plus the ASCII
/// information separators.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Splits like Python's `str.split`: on runs of white space (ignoring it at
/// both ends) when `delim` is `None`, else on every occurrence of `delim`;
/// at most `max` splits when given.
fn py_split(s: &str, delim: Option<&str>, max: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    match delim {
        Some(d) => {
            let mut rest = s;
            while max.is_none_or(|m| out.len() < m) {
                match rest.find(d) {
                    Some(p) => {
                        out.push(rest[..p].to_string());
                        rest = &rest[p + d.len()..];
                    }
                    None => break,
                }
            }
            out.push(rest.to_string());
        }
        None => {
            let mut rest = s.trim_start_matches(is_py_space);
            while !rest.is_empty() {
                if max.is_some_and(|m| out.len() >= m) {
                    // The remainder keeps its trailing white space, as in Python.
                    out.push(rest.to_string());
                    break;
                }
                let end = rest.find(is_py_space).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = rest[end..].trim_start_matches(is_py_space);
            }
        }
    }
    out
}

/// Runs `StringSplit`: the pieces, padded with empty strings to the longest
/// split, and the number of pieces of each element.
pub(crate) fn string_split(a: &StringSplit, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (x, shape) = strings(inputs, 0, "X")?;
    let delim = a.delimiter.as_deref().filter(|d| !d.is_empty());
    let max = a.maxsplit.and_then(|m| usize::try_from(m).ok());
    let parts: Vec<Vec<String>> = x.iter().map(|s| py_split(s, delim, max)).collect();
    let width = parts.iter().map(Vec::len).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(parts.len() * width);
    let mut counts = Vec::with_capacity(parts.len());
    for p in parts {
        counts.push(p.len() as i64);
        let pad = width - p.len();
        flat.extend(p);
        flat.extend(std::iter::repeat_n(String::new(), pad));
    }
    let mut yshape = shape.clone();
    yshape.push(width);
    outputs(vec![string_tensor(&yshape, flat)?, Tensor::from_vec(&shape, counts)])
}

/// Runs `StringNormalizer`: drops the elements that are stop words
/// (compared case-insensitively unless `is_case_sensitive`), then changes
/// case. Only `[C]` and `[1, C]` inputs are defined; when every element is
/// dropped the output is one empty string (`[1]` or `[1, 1]`).
pub(crate) fn string_normalizer(a: &StringNormalizer, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (x, shape) = strings(inputs, 0, "X")?;
    let two_d = match shape.as_slice() {
        [_] => false,
        [1, _] => true,
        s => return Err(EvalError::new(format!("X must have shape [C] or [1, C], got {s:?}"))),
    };
    let fold = |s: &str| if a.is_case_sensitive { s.to_string() } else { s.to_lowercase() };
    let stops: HashSet<String> = a.stopwords.iter().flatten().map(|s| fold(s)).collect();
    let mut kept: Vec<String> = x
        .iter()
        .filter(|s| !stops.contains(&fold(s)))
        .map(|s| match a.case_change_action {
            CaseChange::None => s.to_string(),
            CaseChange::Lower => s.to_lowercase(),
            CaseChange::Upper => s.to_uppercase(),
        })
        .collect();
    if kept.is_empty() {
        kept.push(String::new());
    }
    let n = kept.len();
    let out_shape = if two_d { vec![1, n] } else { vec![n] };
    outputs(vec![string_tensor(&out_shape, kept)?])
}

/// Runs `RegexFullMatch`: whether each whole string matches the pattern.
pub(crate) fn regex_full_match(a: &RegexFullMatch, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (x, shape) = strings(inputs, 0, "X")?;
    let pattern = a.pattern.as_deref().ok_or_else(|| EvalError::new("the pattern attribute is required"))?;
    let re = regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| EvalError::new(format!("invalid pattern {pattern:?}: {e}")))?;
    let out: Vec<bool> = x.iter().map(|s| re.is_match(s)).collect();
    outputs(vec![Tensor::from_vec(&shape, out)])
}

/// A token of a `TfIdfVectorizer` input or pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Token {
    Int(i64),
    Str(String),
}

/// Runs `TfIdfVectorizer`: counts the pool's n-grams (with skips) in each
/// row, then weights the counts.
pub(crate) fn tfidf_vectorizer(a: &TfIdfVectorizer, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x_t = tensor_arg(inputs, 0, "X")?;
    let pool: Vec<Token> = match (&a.pool_int64s, &a.pool_strings) {
        (Some(p), None) => p.iter().map(|&v| Token::Int(v)).collect(),
        (None, Some(p)) => p.iter().map(|s| Token::Str(s.clone())).collect(),
        _ => return Err(EvalError::new("exactly one of pool_int64s and pool_strings must be given")),
    };
    let tokens: Vec<Token> = match (x_t.data(), a.pool_strings.is_some()) {
        (TensorData::String(s), true) => s.iter().map(|v| Token::Str(v.clone())).collect(),
        (_, false) => x_t
            .to_i64_vec()
            .ok_or_else(|| EvalError::new(format!("X must be an integer tensor for pool_int64s, got {}", x_t.dtype())))?
            .into_iter()
            .map(Token::Int)
            .collect(),
        (_, true) => {
            return Err(EvalError::new(format!("X must be a string tensor for pool_strings, got {}", x_t.dtype())));
        }
    };
    let (rows, cols, out_shape_rows) = match x_t.shape() {
        [] => (1, 1, None),
        &[c] => (1, c, None),
        &[b, c] => (b, c, Some(b)),
        s => return Err(EvalError::new(format!("X must be 1-D or 2-D, got shape {s:?}"))),
    };
    let (min_n, max_n) = (a.min_gram_length, a.max_gram_length);
    if min_n < 1 || max_n < min_n {
        return Err(EvalError::new(format!("need 1 <= min_gram_length ({min_n}) <= max_gram_length ({max_n})")));
    }
    let max_skip = usize::try_from(a.max_skip_count)
        .map_err(|_| EvalError::new(format!("max_skip_count must be non-negative, got {}", a.max_skip_count)))?;
    let out_size = match a.ngram_indexes.iter().max() {
        Some(&m) if a.ngram_indexes.iter().all(|&i| i >= 0) => m as usize + 1,
        Some(_) => return Err(EvalError::new("ngram_indexes must be non-negative")),
        None => 0,
    };
    let weighting = match a.mode.as_str() {
        "TF" | "IDF" | "TFIDF" => a.mode.as_str(),
        m => return Err(EvalError::new(format!("mode '{m}' is not one of TF, IDF, TFIDF"))),
    };
    if let Some(w) = &a.weights
        && !w.is_empty()
        && w.len() < out_size
    {
        return Err(EvalError::new(format!("weights has {} entries for {out_size} outputs", w.len())));
    }
    // The pool's n-grams of the wanted sizes, mapped to output coordinates
    // through `ngram_indexes`, which has one entry per n-gram of the pool (a
    // repeated n-gram keeps its last coordinate).
    let mut grams: HashMap<&[Token], usize> = HashMap::new();
    let mut gram_id = 0;
    for (k, &start) in a.ngram_counts.iter().enumerate() {
        let n = k + 1;
        let end = a.ngram_counts.get(k + 1).map_or(pool.len() as i64, |&e| e);
        if start < 0 || end < start || end as usize > pool.len() {
            return Err(EvalError::new(format!(
                "ngram_counts {:?} do not fit a pool of {}",
                a.ngram_counts,
                pool.len()
            )));
        }
        let (start, end) = (start as usize, end as usize);
        let count = (end - start) / n;
        if (n as i64) >= min_n && (n as i64) <= max_n {
            for g in 0..count {
                let s = start + g * n;
                let o = *a.ngram_indexes.get(gram_id + g).ok_or_else(|| {
                    EvalError::new(format!("ngram_indexes has {} entries, too few for the pool", a.ngram_indexes.len()))
                })?;
                grams.insert(&pool[s..s + n], o as usize);
            }
        }
        gram_id += count;
    }
    let mut counts = vec![0u64; rows * out_size];
    let mut gram: Vec<Token> = Vec::new();
    for r in 0..rows {
        let row = &tokens[r * cols..(r + 1) * cols];
        for n in min_n as usize..=max_n as usize {
            // Unigrams are not affected by skips, so they are counted once.
            let skips = if n == 1 { 0 } else { max_skip };
            for skip in 0..=skips {
                let dist = skip + 1;
                for start in 0..row.len() {
                    let last = start + dist * (n - 1);
                    if last >= row.len() {
                        break;
                    }
                    gram.clear();
                    gram.extend((0..n).map(|k| row[start + k * dist].clone()));
                    if let Some(&o) = grams.get(gram.as_slice()) {
                        counts[r * out_size + o] += 1;
                    }
                }
            }
        }
    }
    let weights = a.weights.as_deref().filter(|w| !w.is_empty());
    let y: Vec<f32> = counts
        .iter()
        .enumerate()
        .map(|(p, &c)| {
            let w = weights.map_or(1.0, |w| w[p % out_size.max(1)]);
            match weighting {
                "TF" => c as f32,
                "IDF" => {
                    if c > 0 {
                        w
                    } else {
                        0.0
                    }
                }
                _ => w * c as f32,
            }
        })
        .collect();
    let shape = match out_shape_rows {
        Some(b) => vec![b, out_size],
        None => vec![out_size],
    };
    let a = ndarray::ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| EvalError::new(e.to_string()))?;
    outputs(vec![Tensor::from(a)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{assert_close, cx, run_n, run1};
    use sharc_ir::Op;

    fn st(shape: &[usize], v: &[&str]) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_vec(shape, v.iter().map(|s| s.to_string()).collect::<Vec<_>>())))
    }

    fn strs(t: &Tensor) -> Vec<&str> {
        t.as_array::<String>().unwrap().iter().map(String::as_str).collect()
    }

    #[test]
    fn concat_broadcasts() {
        let y = run1(&Op::StringConcat, vec![st(&[2, 1], &["a", "é"]), st(&[3], &["x", "", "zz"])]);
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(strs(&y), ["ax", "a", "azz", "éx", "é", "ézz"]);
        assert!(run(&Op::StringConcat, &[st(&[2], &["a", "b"]), st(&[3], &["x", "y", "z"])], &cx(1)).unwrap().is_err());
    }

    #[test]
    fn split_follows_python_str_split() {
        // Expected values are what Python's str.split gives.
        assert_eq!(py_split(" a  b c ", None, None), ["a", "b", "c"]);
        assert_eq!(py_split(" a  b c ", None, Some(1)), ["a", "b c "]);
        assert_eq!(py_split("a,,b,", Some(","), None), ["a", "", "b", ""]);
        assert_eq!(py_split("a,,b,", Some(","), Some(1)), ["a", ",b,"]);
        assert_eq!(py_split("", Some(","), None), [""]);
        assert!(py_split("", None, None).is_empty());
        assert_eq!(py_split("a<>b", Some("<>"), None), ["a", "b"]);
    }

    #[test]
    fn split_pads_and_counts() {
        let op = Op::StringSplit(StringSplit { delimiter: Some("-".into()), maxsplit: None });
        let out = run_n(&op, vec![st(&[3], &["a-b-c", "d", ""])], 2);
        assert_eq!(out[0].shape(), &[3, 3]);
        assert_eq!(strs(&out[0]), ["a", "b", "c", "d", "", "", "", "", ""]);
        assert_eq!(out[1].to_i64_vec().unwrap(), [3, 1, 1]);
        // An empty input gives an empty [0, 0] result.
        let out = run_n(&op, vec![st(&[0], &[])], 2);
        assert_eq!(out[0].shape(), &[0, 0]);
    }

    #[test]
    fn normalizer_removes_stop_words_then_changes_case() {
        let op = |sensitive, case, stop: &[&str]| {
            Op::StringNormalizer(StringNormalizer {
                case_change_action: case,
                is_case_sensitive: sensitive,
                locale: None,
                stopwords: Some(stop.iter().map(|s| s.to_string()).collect()),
            })
        };
        let x = st(&[1, 4], &["Monday", "tuesday", "monday", "Wed"]);
        let y = run1(&op(false, CaseChange::Upper, &["monday"]), vec![x.clone()]);
        assert_eq!((y.shape(), strs(&y)), (&[1usize, 2][..], vec!["TUESDAY", "WED"]));
        let y = run1(&op(true, CaseChange::Lower, &["monday"]), vec![x.clone()]);
        assert_eq!(strs(&y), ["monday", "tuesday", "wed"]);
        let y = run1(&op(false, CaseChange::None, &["monday", "TUESDAY", "wed"]), vec![x]);
        assert_eq!((y.shape(), strs(&y)), (&[1usize, 1][..], vec![""]));
        assert!(run(&op(false, CaseChange::None, &[]), &[st(&[2, 1], &["a", "b"])], &cx(1)).unwrap().is_err());
    }

    #[test]
    fn regex_full_match_is_anchored() {
        let op = |p: &str| Op::RegexFullMatch(RegexFullMatch { pattern: Some(p.into()) });
        let y = run1(&op(r"[a-z]+@(\w+)\.com"), vec![st(&[3], &["ab@cd.com", "xab@cd.comx", "AB@cd.com"])]);
        assert_eq!(y.as_array::<bool>().unwrap().iter().copied().collect::<Vec<_>>(), [true, false, false]);
        // Alternation binds inside the anchors.
        let y = run1(&op("a|b"), vec![st(&[2], &["ab", "b"])]);
        assert_eq!(y.as_array::<bool>().unwrap().iter().copied().collect::<Vec<_>>(), [false, true]);
        assert!(run(&op("(unclosed"), &[st(&[1], &["x"])], &cx(1)).unwrap().is_err());
    }

    fn tfidf(mode: &str) -> Op {
        Op::TfIdfVectorizer(TfIdfVectorizer {
            max_gram_length: 2,
            max_skip_count: 1,
            min_gram_length: 1,
            mode: mode.into(),
            ngram_counts: vec![0, 3],
            ngram_indexes: vec![2, 0, 3, 1, 4],
            pool_int64s: Some(vec![2, 3, 4, 2, 3, 3, 1]),
            pool_strings: None,
            weights: Some(vec![0.5, 1.5, 2.0, 3.0, 4.0]),
        })
    }

    // Expected values from onnx.reference.
    #[test]
    fn tfidf_modes_with_skips() {
        let x = Some(Value::Tensor(Tensor::from_vec(&[2, 6], vec![1i64, 2, 3, 2, 3, 4, 3, 2, 3, 1, 1, 4])));
        let tf = [2.0, 2.0, 2.0, 1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 2.0];
        assert_close(&run1(&tfidf("TF"), vec![x.clone()]), &[2, 5], &tf, 0.0);
        let idf = [0.5, 1.5, 2.0, 3.0, 0.0, 0.5, 1.5, 2.0, 3.0, 4.0];
        assert_close(&run1(&tfidf("IDF"), vec![x.clone()]), &[2, 5], &idf, 0.0);
        let tfidf_w = [1.0, 3.0, 4.0, 3.0, 0.0, 1.0, 1.5, 2.0, 3.0, 8.0];
        assert_close(&run1(&tfidf("TFIDF"), vec![x]), &[2, 5], &tfidf_w, 0.0);
    }

    #[test]
    fn tfidf_strings_only_bigrams() {
        let op = Op::TfIdfVectorizer(TfIdfVectorizer {
            max_gram_length: 2,
            max_skip_count: 0,
            min_gram_length: 2,
            mode: "TF".into(),
            ngram_counts: vec![0, 1],
            ngram_indexes: vec![0, 1],
            pool_int64s: None,
            pool_strings: Some(vec!["z".into(), "b".into(), "a".into()]),
            weights: None,
        });
        let y = run1(&op, vec![st(&[5], &["a", "b", "c", "b", "a"])]);
        assert_close(&y, &[2], &[0.0, 1.0], 0.0);
        // An integer input does not match a string pool.
        let ints = Some(Value::Tensor(Tensor::from_vec(&[2], vec![1i64, 2])));
        assert!(run(&op, &[ints], &cx(1)).unwrap().is_err());
    }
}
