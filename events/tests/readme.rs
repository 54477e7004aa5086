//! `events/README.md` documents every event type, and every example in it parses and
//! round-trips through the NATS binding and the typed decoders.
//! Regenerate the catalogue part with `UPDATE_EVENTS_README=1 cargo test -p events --test readme`.

use cloudevents::{AttributesReader, Event};
use events::catalogue::{README_BEGIN, README_END, example_signer, examples, render_markdown};
use events::{binding, wire};

fn readme_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

#[test]
fn readme_catalogue_is_complete_and_its_examples_round_trip() {
    let path = readme_path();
    let mut readme = std::fs::read_to_string(&path).expect("events/README.md exists");
    let (Some(b), Some(e)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        panic!("README lacks the catalogue markers");
    };
    if std::env::var_os("UPDATE_EVENTS_README").is_some() {
        readme.replace_range(b..e + README_END.len(), &render_markdown());
        std::fs::write(&path, &readme).unwrap();
    }
    let section = &readme[b..];

    // Every type of the catalogue is documented.
    for ex in examples() {
        assert!(section.contains(&format!("\n### {}\n", ex.ty)), "{} is not documented in README.md", ex.ty);
    }

    // Every example parses, round-trips through NATS binary mode, and decodes as its type.
    let verifier = example_signer().verifier();
    let mut checked = 0;
    let mut subject = String::new();
    let mut in_json = false;
    let mut block = String::new();
    let mut in_schema = false;
    let mut example: Option<serde_json::Value> = None;
    let mut validated = 0;
    for line in section.lines() {
        if line.starts_with("<details>") {
            in_schema = true;
        } else if line == "</details>" {
            in_schema = false;
        }
        if in_schema && line == "```" && in_json {
            // The schema of the type, published beside its example: the example must be valid.
            in_json = false;
            let schema: serde_json::Value =
                serde_json::from_str(&block).unwrap_or_else(|e| panic!("schema does not parse: {e}\n{block}"));
            let ty = schema["title"].as_str().unwrap_or_default().to_string();
            assert_eq!(Some(&schema), events::schemas::event_schema(&ty).as_ref(), "README schema of {ty} is stale");
            let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{ty}: invalid schema: {e}"));
            let ex = example.take().unwrap_or_else(|| panic!("{ty}: schema without an example before it"));
            assert_eq!(ex["type"], ty.as_str(), "the schema follows its own type's example");
            let errors: Vec<String> =
                validator.iter_errors(&ex).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "the example of {ty} does not match its schema: {errors:#?}");
            let mut wrong = ex.clone();
            wrong["data"] = serde_json::json!([]);
            assert!(!validator.is_valid(&wrong), "the schema of {ty} accepts any data");
            validated += 1;
            continue;
        }
        if in_schema {
            if line == "```json" {
                in_json = true;
                block.clear();
            } else if in_json {
                block.push_str(line);
                block.push('\n');
            }
            continue;
        }
        if let Some(s) = line.strip_prefix("Subject: `") {
            subject = s.trim_end_matches('`').to_string();
        } else if line == "```json" {
            in_json = true;
            block.clear();
        } else if line == "```" && in_json {
            in_json = false;
            let ev: Event =
                serde_json::from_str(&block).unwrap_or_else(|e| panic!("example does not parse: {e}\n{block}"));
            let (h, body) = binding::to_nats(&ev);
            let back = binding::from_nats(Some(&h), &body).unwrap();
            assert_eq!(back, ev, "binary-mode round trip of {}", ev.ty());
            if ev.ty().starts_with("ambient.result.") {
                let r = wire::decode_result(Some(&h), &body).unwrap();
                assert_eq!(wire::result_event(&r, None), ev);
            } else if events::CommandType::from_type_str(ev.ty()).is_some() {
                let cmd = wire::decode_command(&subject, Some(&h), &body, &verifier)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", ev.ty()));
                assert_eq!(wire::command_event(&cmd, &example_signer()), ev, "typed round trip of {}", ev.ty());
            } else {
                let st = wire::decode_status(Some(&h), &body).unwrap_or_else(|e| panic!("{}: {e:?}", ev.ty()));
                assert_eq!(wire::status_event(&st), ev);
                assert_eq!(st.subject().unwrap(), subject);
            }
            example = Some(serde_json::from_str(&block).unwrap());
            checked += 1;
        } else if in_json {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert_eq!(checked, examples().len(), "one checked example per type");
    assert_eq!(validated, examples().len(), "one schema per type, each validating its example");
}
