//! The embedding engine against sentence-transformers on the same weights
//! (fixtures made by tests/fixtures/make_embedding_fixtures.py).

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::inference::{Bert, EmbeddingEngine, Kernels};
use blaze_actors::router::{ModelCache, ModelFiles};

const MODEL: &str = "all-minilm-l6-v2";

/// The model's directory, pulled into the cache if it is not there.
fn model_directory() -> std::path::PathBuf {
    let settings = Settings::load(&ConfigSources::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(blaze::models::pull(&settings.models, &[MODEL.to_owned()], blaze::models::Progress::Bar))
        .unwrap();
    match ModelCache::from_environment().locate(MODEL, &settings.models.catalog[MODEL]) {
        Some(ModelFiles::Directory(directory)) => directory,
        other => panic!("{other:?}"),
    }
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(a, b)| f64::from(*a) * b).sum();
    let norm_a: f64 = a.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
    let norm_b: f64 = b.iter().map(|b| b.powi(2)).sum::<f64>().sqrt();
    dot / (norm_a * norm_b)
}

/// Every kernel path this CPU runs; each must match the fixtures. On an
/// x86-64 CPU with AVX2 the AVX2 path is among them, and with AVX-512 BF16
/// or VNNI those paths, so that a broken feature check cannot drop one from
/// the test unseen.
fn kernels_here() -> Vec<Kernels> {
    let kernels = Kernels::supported_here();
    assert!(kernels.contains(&Kernels::Generic));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(kernels.contains(&Kernels::Avx2), "{kernels:?}");
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
    {
        assert!(kernels.contains(&Kernels::Avx512Bf16), "{kernels:?}");
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
    {
        assert!(kernels.contains(&Kernels::Avx512Vnni), "{kernels:?}");
    }
    kernels
}

#[test]
fn embeddings_match_sentence_transformers_alone_and_batched() {
    let directory = model_directory();
    for kernels in kernels_here() {
        for threads in [1, 2] {
            let engine = Bert::load_with_kernels(&directory, threads, kernels).unwrap();
            assert_eq!(engine.kernels(), kernels);
            embeddings_match_the_fixture(&engine, &format!("{kernels} on {threads} threads"));
        }
    }
}

fn embeddings_match_the_fixture(engine: &Bert, path: &str) {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/embeddings-all-minilm-l6-v2.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    assert_eq!(engine.dimensions(), 384);

    let tokens: Vec<Vec<u32>> =
        cases.iter().map(|case| engine.tokenize(case["input"].as_str().unwrap()).unwrap()).collect();
    for (case, tokens) in cases.iter().zip(&tokens) {
        assert_eq!(tokens.len() as u64, case["tokens"].as_u64().unwrap(), "token count of {}", case["input"]);
    }
    let batch: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let batched = engine.embed(&batch).unwrap();
    for (index, case) in cases.iter().enumerate() {
        let expected: Vec<f64> =
            case["embedding"].as_array().unwrap().iter().map(|value| value.as_f64().unwrap()).collect();
        let alone = engine.embed(&[&tokens[index]]).unwrap().remove(0);
        for (how, vector) in [("batched", &batched[index]), ("alone", &alone)] {
            let similarity = cosine(vector, &expected);
            assert!(similarity >= 0.9999, "{path}, {how} {}: cosine {similarity}", case["input"]);
        }
    }
}

#[test]
fn the_fastest_kernels_serve_by_default_and_others_are_refused_at_load() {
    let directory = model_directory();
    // The test binary runs without BLAZE_KERNELS: the default is the best.
    assert!(std::env::var_os("BLAZE_KERNELS").is_none());
    assert_eq!(Bert::load(&directory, 1).unwrap().kernels(), Kernels::best());
    assert_eq!(Kernels::best(), kernels_here()[0]);
    for kernels in Kernels::ALL.into_iter().filter(|kernels| !kernels.supported()) {
        let error = Bert::load_with_kernels(&directory, 1, kernels).err().unwrap();
        assert!(error.to_string().contains("cannot run on this CPU"), "{error}");
    }
}

#[test]
fn inputs_over_the_limit_or_outside_the_vocabulary_are_refused() {
    let engine = Bert::load(&model_directory(), 1).unwrap();
    let long = vec![1000u32; engine.max_tokens() + 1];
    let error = engine.embed(&[&long]).unwrap_err();
    assert!(error.to_string().contains(&engine.max_tokens().to_string()), "{error}");
    assert!(engine.embed(&[&[101, 40_000, 102]]).unwrap_err().to_string().contains("vocabulary"));
    assert!(engine.embed(&[&[]]).is_err());
}

/// MiniLM's files with the sentence-transformers modules of another
/// family: [CLS]-token pooling, no Normalize (as
/// tests/fixtures/make_pooling_fixtures.py writes them).
fn cls_model_directory() -> tempfile::TempDir {
    let source = model_directory();
    let directory = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json"] {
        std::fs::copy(source.join(name), directory.path().join(name)).unwrap();
    }
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]);
    std::fs::write(directory.path().join("modules.json"), modules.to_string()).unwrap();
    std::fs::create_dir(directory.path().join("1_Pooling")).unwrap();
    let pooling = serde_json::json!({
        "word_embedding_dimension": 384,
        "pooling_mode_cls_token": true,
        "pooling_mode_mean_tokens": false,
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false,
    });
    std::fs::write(directory.path().join("1_Pooling/config.json"), pooling.to_string()).unwrap();
    directory
}

#[test]
fn the_pooling_and_normalization_come_from_the_model_files() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/embeddings-all-minilm-l6-v2-cls.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let directory = cls_model_directory();
    for kernels in kernels_here() {
        let engine = Bert::load_with_kernels(directory.path(), 2, kernels).unwrap();
        cls_vectors_match_the_fixture(&engine, cases, kernels);
    }
}

fn cls_vectors_match_the_fixture(engine: &Bert, cases: &[serde_json::Value], kernels: Kernels) {
    let tokens: Vec<Vec<u32>> =
        cases.iter().map(|case| engine.tokenize(case["input"].as_str().unwrap()).unwrap()).collect();
    let batch: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let batched = engine.embed(&batch).unwrap();
    let norm = |vector: &[f64]| vector.iter().map(|value| value.powi(2)).sum::<f64>().sqrt();
    for (index, case) in cases.iter().enumerate() {
        let expected: Vec<f64> =
            case["embedding"].as_array().unwrap().iter().map(|value| value.as_f64().unwrap()).collect();
        // Not normalized: the [CLS] state keeps its length.
        assert!((norm(&expected) - 1.0).abs() > 0.1, "{}", case["input"]);
        let alone = engine.embed(&[&tokens[index]]).unwrap().remove(0);
        for (how, vector) in [("batched", &batched[index]), ("alone", &alone)] {
            let similarity = cosine(vector, &expected);
            assert!(similarity >= 0.9999, "{kernels}, {how} {}: cosine {similarity}", case["input"]);
            let length: Vec<f64> = vector.iter().map(|value| f64::from(*value)).collect();
            let ratio = norm(&length) / norm(&expected);
            // Within the rounding of the AMX path's bf16 weights (about
            // 0.1%); a normalized vector would be about a seventh as long.
            assert!((ratio - 1.0).abs() < 1e-2, "{kernels}, {how} {}: length ratio {ratio}", case["input"]);
        }
    }
}
