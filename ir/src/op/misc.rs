//! Type conversion, randomness, strings and text features.

use crate::{DType, attr_struct, string_enum};

string_enum! {
    /// How `Cast` rounds when narrowing to `float8e8m0` (the only type the
    /// attribute applies to).
    pub enum RoundMode {
        /// Away from zero: any fraction bumps the exponent.
        Up = "up",
        /// Toward zero: the fraction is dropped.
        Down = "down",
        /// To the nearest power of two, ties away from zero. ONNX spells it
        /// `nearest`; the variant name predates that spelling and is kept.
        ToNearestEven = "nearest",
    }
}

attr_struct! {
    /// Converts elements to another type.
    pub struct Cast {
        to: DType = "to";
        /// Clamp out-of-range values when narrowing to a float8 type.
        saturate: bool = "saturate", default true;
        round_mode: RoundMode = "round_mode", default RoundMode::Up;
    }
}

attr_struct! {
    /// Converts elements to the type of the second input.
    pub struct CastLike {
        saturate: bool = "saturate", default true;
        round_mode: RoundMode = "round_mode", default RoundMode::Up;
    }
}

attr_struct! {
    /// Reinterprets the bits of each element as another type of the same width.
    pub struct BitCast {
        to: DType = "to";
    }
}

attr_struct! {
    /// Uniform random values in `[low, high)`, in the shape of the input.
    pub struct RandomUniformLike {
        dtype: Option<DType> = "dtype";
        high: f32 = "high", default 1.0;
        low: f32 = "low", default 0.0;
        seed: Option<f32> = "seed";
    }
}

attr_struct! {
    /// Normal random values, in the shape of the input.
    pub struct RandomNormalLike {
        dtype: Option<DType> = "dtype";
        mean: f32 = "mean", default 0.0;
        scale: f32 = "scale", default 1.0;
        seed: Option<f32> = "seed";
    }
}

attr_struct! {
    /// Uniform random values in `[low, high)` of a fixed shape.
    pub struct RandomUniform {
        dtype: DType = "dtype", default DType::F32;
        high: f32 = "high", default 1.0;
        low: f32 = "low", default 0.0;
        seed: Option<f32> = "seed";
        shape: Vec<i64> = "shape";
    }
}

attr_struct! {
    /// Normal random values of a fixed shape.
    pub struct RandomNormal {
        dtype: DType = "dtype", default DType::F32;
        mean: f32 = "mean", default 0.0;
        scale: f32 = "scale", default 1.0;
        seed: Option<f32> = "seed";
        shape: Vec<i64> = "shape";
    }
}

attr_struct! {
    /// Samples class indices from unnormalised log-probabilities.
    pub struct Multinomial {
        dtype: DType = "dtype", default DType::I32;
        sample_size: i64 = "sample_size", default 1;
        seed: Option<f32> = "seed";
    }
}

attr_struct! {
    /// Draws 0/1 with the input's probabilities.
    pub struct Bernoulli {
        dtype: Option<DType> = "dtype";
        seed: Option<f32> = "seed";
    }
}

attr_struct! {
    /// Splits strings on a delimiter.
    pub struct StringSplit {
        delimiter: Option<String> = "delimiter";
        maxsplit: Option<i64> = "maxsplit";
    }
}

string_enum! {
    /// Case change applied by `StringNormalizer`.
    pub enum CaseChange {
        None = "NONE",
        Lower = "LOWER",
        Upper = "UPPER",
    }
}

attr_struct! {
    /// Removes stop words and changes case.
    pub struct StringNormalizer {
        case_change_action: CaseChange = "case_change_action", default CaseChange::None;
        is_case_sensitive: bool = "is_case_sensitive", default false;
        locale: Option<String> = "locale";
        stopwords: Option<Vec<String>> = "stopwords";
    }
}

attr_struct! {
    /// Tests each string against a regular expression.
    pub struct RegexFullMatch {
        pattern: Option<String> = "pattern";
    }
}

attr_struct! {
    /// N-gram counts (TF, IDF or TF-IDF) of token sequences.
    pub struct TfIdfVectorizer {
        max_gram_length: i64 = "max_gram_length";
        max_skip_count: i64 = "max_skip_count";
        min_gram_length: i64 = "min_gram_length";
        mode: String = "mode";
        ngram_counts: Vec<i64> = "ngram_counts";
        ngram_indexes: Vec<i64> = "ngram_indexes";
        pool_int64s: Option<Vec<i64>> = "pool_int64s";
        pool_strings: Option<Vec<String>> = "pool_strings";
        weights: Option<Vec<f32>> = "weights";
    }
}
