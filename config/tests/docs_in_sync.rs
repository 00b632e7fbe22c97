//! docs/config.md must show exactly the example `rushes serve --print-example-config` prints.

#[test]
fn config_doc_matches_the_example() {
    let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/config.md exists");
    let example = rushes_config::Config::example_toml();
    assert!(
        doc.contains(example.trim()),
        "docs/config.md is out of date: regenerate its TOML block with `rushes serve --print-example-config`"
    );
}
