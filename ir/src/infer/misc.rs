//! Randomness, strings and text features.

use super::elementwise::broadcast;
use super::symbolic::Expr;
use super::{OpCx, RuleResult, out, show};
use crate::{DType, Op};

pub(super) fn infer(cx: &mut OpCx) -> RuleResult {
    match cx.op {
        Op::RandomUniformLike(r) => Ok(vec![out(r.dtype.or(cx.dtype(0)), cx.shape(0))?]),
        Op::RandomNormalLike(r) => Ok(vec![out(r.dtype.or(cx.dtype(0)), cx.shape(0))?]),
        Op::Bernoulli(b) => Ok(vec![out(b.dtype.or(cx.dtype(0)), cx.shape(0))?]),
        Op::RandomUniform(r) => Ok(vec![out(Some(r.dtype), Some(fixed_shape(&r.shape)?))?]),
        Op::RandomNormal(r) => Ok(vec![out(Some(r.dtype), Some(fixed_shape(&r.shape)?))?]),
        Op::Multinomial(m) => {
            let x = cx.shape_of_rank(0, "the input", |r| r == 2)?;
            let batch = match x {
                Some(x) => x[0].clone(),
                None => cx.fresh(0),
            };
            Ok(vec![out(Some(m.dtype), Some(vec![batch, Expr::int(m.sample_size)]))?])
        }
        Op::StringSplit(_) => {
            let x = cx.shape(0);
            let y = x.clone().map(|mut s| {
                s.push(cx.fresh(0));
                s
            });
            Ok(vec![out(Some(DType::String), y)?, out(Some(DType::I64), x)?])
        }
        Op::StringNormalizer(s) => {
            let x = cx.shape_of_rank(0, "the input", |r| r == 1 || r == 2)?;
            let removes = s.stopwords.as_ref().is_some_and(|w| !w.is_empty());
            let shape = match x {
                // Without stop words nothing is removed.
                Some(x) if !removes => Some(x),
                Some(mut x) => {
                    let last = x.len() - 1;
                    x[last] = cx.fresh(0);
                    Some(x)
                }
                None => None,
            };
            Ok(vec![out(Some(DType::String), shape)?])
        }
        Op::RegexFullMatch(_) => Ok(vec![out(Some(DType::Bool), cx.shape(0))?]),
        Op::StringConcat => {
            let shape = match (cx.shape(0), cx.shape(1)) {
                (Some(a), Some(b)) => Some(broadcast(&[&a, &b])?),
                _ => None,
            };
            Ok(vec![out(Some(DType::String), shape)?])
        }
        Op::TfIdfVectorizer(t) => {
            let n = t.ngram_indexes.iter().copied().max().map_or(0, |m| m.saturating_add(1));
            let shape = match cx.shape_of_rank(0, "the input", |r| r == 1 || r == 2)? {
                Some(x) if x.len() == 2 => Some(vec![x[0].clone(), Expr::int(n)]),
                Some(_) => Some(vec![Expr::int(n)]),
                None => None,
            };
            Ok(vec![out(Some(DType::F32), shape)?])
        }
        other => Err(format!("{} is not handled by the misc family", other.op_type())),
    }
}

fn fixed_shape(s: &[i64]) -> Result<Vec<Expr>, String> {
    let dims: Vec<Expr> = s.iter().map(|&d| Expr::int(d)).collect();
    if s.iter().any(|&d| d < 0) {
        return Err(format!("the shape attribute {} has a negative dim", show(&dims)));
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::op;

    #[test]
    fn random_and_strings() {
        let ru = Op::RandomUniform(op::RandomUniform {
            dtype: DType::F64,
            high: 1.0,
            low: 0.0,
            seed: None,
            shape: vec![2, 3],
        });
        assert_eq!(one(ru, [], 1).unwrap(), vec!["f64[2, 3]"]);
        let rl = Op::RandomNormalLike(op::RandomNormalLike { dtype: None, mean: 0.0, scale: 1.0, seed: None });
        assert_eq!(one(rl, [t(DType::F16, &["n"])], 1).unwrap(), vec!["f16[n]"]);
        let m = Op::Multinomial(op::Multinomial { dtype: DType::I64, sample_size: 5, seed: None });
        assert_eq!(one(m, [t(DType::F32, &["b", "10"])], 1).unwrap(), vec!["i64[b, 5]"]);
        let ss = Op::StringSplit(op::StringSplit { delimiter: None, maxsplit: None });
        assert_eq!(one(ss, [t(DType::String, &["n"])], 2).unwrap(), vec!["str[n, unk__out0_0]", "i64[n]"]);
        let sc = one(Op::StringConcat, [t(DType::String, &["n", "1"]), t(DType::String, &["3"])], 1).unwrap();
        assert_eq!(sc, vec!["str[n, 3]"]);
        let tf = Op::TfIdfVectorizer(op::TfIdfVectorizer {
            max_gram_length: 1,
            max_skip_count: 0,
            min_gram_length: 1,
            mode: "TF".into(),
            ngram_counts: vec![0],
            ngram_indexes: vec![0, 1, 5],
            pool_int64s: Some(vec![1, 2, 3]),
            pool_strings: None,
            weights: None,
        });
        // onnx.shape_inference gives [2, 6] for this node.
        assert_eq!(one(tf, [t(DType::I64, &["2", "6"])], 1).unwrap(), vec!["f32[2, 6]"]);
    }
}
