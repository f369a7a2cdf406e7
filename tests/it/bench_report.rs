//! load/bench/report.py, the table `load/bench/all.sh` writes and the
//! smoke run's gate, on figures written here: a figure under half its
//! target fails the gate, one merely short of a target not met yet does
//! not, a benchmark that did not run is named with its reason, and the
//! README's block is replaced between its markers and nowhere else.

use std::path::Path;
use std::process::Command;

fn report(directory: &Path, figures: &str, arguments: &[&str]) -> (bool, String) {
    std::fs::write(directory.join("figures.jsonl"), figures).unwrap();
    std::fs::write(
        directory.join("meta.json"),
        r#"{"smoke": true, "date": "2026-12-07", "commit": "abc1234", "cpu": "AMD EPYC", "cores": 2,
            "features": "AVX-512, no AMX", "not_run": {"litellm": "full run only"}}"#,
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("load/bench/report.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(directory.join("figures.jsonl"))
        .arg(directory.join("meta.json"))
        .arg(directory.join("table.md"))
        .args(arguments)
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

const HEALTH_MET: &str = r#"{"benchmark":"health","blaze_rps":95000.0,"reference_rps":100000.0,"rps_ratio":0.95,"blaze_p99_us":900.0,"reference_p99_us":1000.0,"p99_ratio":0.9}"#;

#[test]
fn the_table_names_each_figure_its_reference_its_target_and_what_did_not_run() {
    let directory = tempfile::tempdir().unwrap();
    let cache = r#"{"benchmark":"cache","reference_rps":100000.0,"cached_rps":21000.0,"rps_ratio":0.21,"reference_p99_us":1000.0,"cached_p99_us":3000.0,"p99_ratio":3.0,"redis_rps":1.0,"redis_added_p50_us":10.0,"redis_added_p50_one_connection_us":150.0}"#;
    let (success, output) = report(directory.path(), &format!("noise\n{HEALTH_MET}\n{cache}\n"), &[]);
    assert!(success, "{output}");
    let table = std::fs::read_to_string(directory.path().join("table.md")).unwrap();
    assert!(table.contains("commit `abc1234`, AMD EPYC (2 cores, AVX-512, no AMX)"), "{table}");
    assert!(table.contains("| health | GET /health requests/s, 64 connections | 95,000 | 100,000 | 0.950x | >= 0.900x | yes |"), "{table}");
    assert!(table.contains("| 0.210x | >= 0.500x | **no** |"), "{table}");
    assert!(table.contains("| 3.00x | <= 2.00x | **no** |"), "{table}");
    assert!(table.contains("- litellm: full run only"), "{table}");
    // Benchmarks with no figures make no rows.
    assert!(!table.contains("| traces |"), "{table}");
}

#[test]
fn the_gate_fails_a_gross_regression_and_spares_a_target_not_met_yet() {
    let directory = tempfile::tempdir().unwrap();
    let recorded = directory.path().join("recorded.jsonl");
    let cache_at = |ratio: f64| {
        format!(
            r#"{{"benchmark":"cache","reference_rps":100000.0,"cached_rps":{},"rps_ratio":{ratio},"reference_p99_us":1000.0,"cached_p99_us":1500.0,"p99_ratio":1.5}}"#,
            ratio * 100000.0
        )
    };
    std::fs::write(&recorded, format!("{HEALTH_MET}\n{}\n", cache_at(0.21))).unwrap();
    let gate = ["--gate", recorded.to_str().unwrap()];

    // 0.15x: short of the 0.5x target, but above half the recorded 0.21x.
    let (success, output) = report(directory.path(), &format!("{HEALTH_MET}\n{}\n", cache_at(0.15)), &gate);
    assert!(success, "{output}");
    assert!(output.contains("smoke gate: no figure under half"), "{output}");

    // 0.09x: under half of both.
    let (success, output) = report(directory.path(), &format!("{HEALTH_MET}\n{}\n", cache_at(0.09)), &gate);
    assert!(!success, "{output}");
    assert!(output.contains("gross regression: cache:"), "{output}");

    // /health at 0.40x is under half its 0.9x target.
    let slow = HEALTH_MET.replace("\"rps_ratio\":0.95", "\"rps_ratio\":0.40");
    let (success, output) = report(directory.path(), &format!("{slow}\n{}\n", cache_at(0.21)), &gate);
    assert!(!success, "{output}");
    assert!(output.contains("gross regression: health:"), "{output}");

    // A p99 is reported, not gated: one round of 2 s swings too far.
    let (success, output) = report(
        directory.path(),
        &format!("{HEALTH_MET}\n{}\n", cache_at(0.21).replace("\"p99_ratio\":1.5", "\"p99_ratio\":4.5")),
        &gate,
    );
    assert!(success, "{output}");

    // An upper bound: the gateway's added p50, recorded at 5,000 us against
    // a 200 us target, fails past twice the larger of the two.
    let gateway_at = |added: f64| {
        format!(
            r#"{{"benchmark":"gateway","direct_p50_us":1000.0,"proxied_p50_us":{},"added_p50_us":{added}}}"#,
            1000.0 + added
        )
    };
    std::fs::write(&recorded, format!("{HEALTH_MET}\n{}\n{}\n", cache_at(0.21), gateway_at(5000.0))).unwrap();
    let (success, output) =
        report(directory.path(), &format!("{HEALTH_MET}\n{}\n", gateway_at(9000.0)), &gate);
    assert!(success, "{output}");
    let (success, output) =
        report(directory.path(), &format!("{HEALTH_MET}\n{}\n", gateway_at(12000.0)), &gate);
    assert!(!success, "{output}");
    assert!(output.contains("over 10,000"), "{output}");

    // No recorded run yet: half the target alone.
    let missing = directory.path().join("none.jsonl");
    let (success, output) = report(
        directory.path(),
        &format!("{HEALTH_MET}\n{}\n", cache_at(0.15)),
        &["--gate", missing.to_str().unwrap()],
    );
    assert!(!success, "{output}");
}

#[test]
fn the_readme_block_is_replaced_between_its_markers_only() {
    let directory = tempfile::tempdir().unwrap();
    let readme = directory.path().join("README.md");
    std::fs::write(
        &readme,
        "# Title\n\nbefore\n<!-- all.sh: begin -->\nstale figures\n<!-- all.sh: end -->\nafter\n",
    )
    .unwrap();
    let (success, output) =
        report(directory.path(), &format!("{HEALTH_MET}\n"), &["--readme", readme.to_str().unwrap()]);
    assert!(success, "{output}");
    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(text.starts_with("# Title\n\nbefore\n<!-- all.sh: begin -->\n"), "{text}");
    assert!(text.ends_with("<!-- all.sh: end -->\nafter\n"), "{text}");
    assert!(!text.contains("stale figures"), "{text}");
    assert!(text.contains("| health |"), "{text}");

    // A README without the markers is refused, not rewritten.
    std::fs::write(&readme, "no markers\n").unwrap();
    let (success, output) =
        report(directory.path(), &format!("{HEALTH_MET}\n"), &["--readme", readme.to_str().unwrap()]);
    assert!(!success, "{output}");
    assert_eq!(std::fs::read_to_string(&readme).unwrap(), "no markers\n");
}
