//! docs/verdict.schema.json describes what src/verdict.rs writes: serialised sample verdicts validate,
//! broken ones do not, and the JSON reads back to the same value.

use std::collections::BTreeMap;

use classguard::policy::{decide, Policy};
use classguard::verdict::{
    now_rfc3339, BBox, Decision, Evidence, Finding, Label, ModelRef, ModelUse, PolicyRef,
    RecordingInfo, Severity, StageStats, Stats, Track, Verdict, SCHEMA_VERSION,
};
use serde_json::{json, Value};

fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/verdict.schema.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("schema compiles")
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn hash(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn full_verdict() -> Verdict {
    let policy = Policy::embedded().unwrap();
    let face = ModelRef {
        id: "yunet-2023mar".into(),
        sha256: hash('a'),
    };
    let ocr = ModelRef {
        id: "ppocrv6-rec-small".into(),
        sha256: hash('b'),
    };
    let findings = vec![
        Finding {
            label: Label::NoFace,
            severity: Severity::Medium,
            track: Track::Camera,
            start_ms: 12_000,
            end_ms: 58_000,
            confidence: 0.9,
            model: face.clone(),
            rule_id: "face.no_face".into(),
            evidence: Evidence {
                slice_path: Some("r1/camera/000012000.jpg".into()),
                ..Default::default()
            },
            reason: "No face on camera for 46 s".into(),
        },
        Finding {
            label: Label::MultipleFaces,
            severity: Severity::Low,
            track: Track::Camera,
            start_ms: 60_000,
            end_ms: 75_000,
            confidence: 0.8,
            model: face,
            rule_id: "face.multiple_faces".into(),
            evidence: Evidence {
                slice_path: Some("r1/camera/000060000.jpg".into()),
                bbox: Some(BBox {
                    x: 10.0,
                    y: 20.5,
                    w: 64.0,
                    h: 80.0,
                }),
                ..Default::default()
            },
            reason: "2 faces on camera".into(),
        },
        Finding {
            label: Label::ContactInfo,
            severity: Severity::High,
            track: Track::Desktop,
            start_ms: 90_500,
            end_ms: 91_000,
            confidence: 0.97,
            model: ocr,
            rule_id: "contact.email".into(),
            evidence: Evidence {
                ocr_excerpt: Some("teacher.li@example.com".into()),
                ..Default::default()
            },
            reason: "E-mail address on the shared screen".into(),
        },
        Finding {
            label: Label::PaymentSolicitation,
            severity: Severity::High,
            track: Track::Microphone,
            start_ms: 120_000,
            end_ms: 124_200,
            confidence: 1.0,
            model: ModelRef {
                id: "whisper-tiny.en".into(),
                sha256: hash('c'),
            },
            rule_id: "payment.service_en".into(),
            evidence: Evidence {
                audio_clip: Some("r1/mic/000120000.ogg".into()),
                transcript_excerpt: Some("and pay me by PayPal".into()),
                ..Default::default()
            },
            reason: "Off-platform payment request".into(),
        },
    ];
    let decision = decide(&policy, &findings, false);
    Verdict {
        schema_version: SCHEMA_VERSION,
        recording: RecordingInfo {
            id: "r1".into(),
            source: "/data/in/r1.webm".into(),
            sha256: hash('d'),
            duration_ms: 600_000,
            partial: false,
            teacher_id: None,
            partial_reason: None,
            error: None,
        },
        decision,
        findings,
        stats: Stats {
            duration_ms: 600_000,
            slices: 640,
            wall_ms: 30_000,
            realtime_factor: Stats::realtime_factor_of(600_000, 30_000),
            stages: BTreeMap::from([
                (
                    "decode".to_string(),
                    StageStats {
                        wall_ms: 9000,
                        frames: 18000,
                    },
                ),
                (
                    "face".to_string(),
                    StageStats {
                        wall_ms: 12000,
                        frames: 600,
                    },
                ),
            ]),
            model_calls: BTreeMap::from([
                ("yunet".to_string(), 400),
                ("open_nsfw".to_string(), 380),
            ]),
            gate_savings: BTreeMap::from([
                ("frame_diff".to_string(), 200),
                ("ocr_new_slide".to_string(), 1100),
            ]),
        },
        policy: PolicyRef::from(&policy),
        models: vec![
            ModelUse {
                role: "face_detector".into(),
                id: "yunet-2023mar".into(),
                sha256: hash('a'),
            },
            ModelUse {
                role: "ocr_rec".into(),
                id: "ppocrv6-rec-small".into(),
                sha256: hash('b'),
            },
        ],
        created_at: now_rfc3339(),
    }
}

fn error_verdict() -> Verdict {
    let policy = Policy::embedded().unwrap();
    Verdict {
        schema_version: SCHEMA_VERSION,
        recording: RecordingInfo {
            id: "r2".into(),
            source: "s3://bucket/r2.webm".into(),
            sha256: String::new(),
            duration_ms: 0,
            partial: true,
            teacher_id: None,
            partial_reason: Some("not read".into()),
            error: Some("object not found".into()),
        },
        decision: Decision::Error,
        findings: vec![],
        stats: Stats::default(),
        policy: PolicyRef::from(&policy),
        models: vec![],
        created_at: "2026-11-29T07:00:00Z".into(),
    }
}

#[test]
fn schema_is_a_valid_2020_12_schema() {
    assert!(jsonschema::meta::is_valid(&schema()));
    assert_eq!(
        schema()["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn sample_verdicts_validate_and_round_trip() {
    let v = validator();
    for verdict in [full_verdict(), error_verdict()] {
        let value = serde_json::to_value(&verdict).unwrap();
        assert_eq!(errors(&v, &value), Vec::<String>::new(), "{value:#}");
        let back: Verdict = serde_json::from_value(value).unwrap();
        assert_eq!(back, verdict);
    }
    assert_eq!(full_verdict().decision, Decision::Review);
}

#[test]
fn invalid_verdicts_fail() {
    let v = validator();
    let good = serde_json::to_value(full_verdict()).unwrap();
    type Edit = fn(&mut Value);
    let edits: [(&str, Edit); 11] = [
        ("decision outside the enum", |x| {
            x["decision"] = json!("maybe")
        }),
        ("missing recording", |x| {
            x.as_object_mut().unwrap().remove("recording");
        }),
        ("unknown top-level field", |x| x["extra"] = json!(1)),
        ("bad severity", |x| {
            x["findings"][0]["severity"] = json!("severe")
        }),
        ("bad track", |x| x["findings"][0]["track"] = json!("webcam")),
        ("negative time", |x| {
            x["findings"][0]["start_ms"] = json!(-5)
        }),
        ("confidence above 1", |x| {
            x["findings"][0]["confidence"] = json!(1.5)
        }),
        ("short model hash", |x| {
            x["models"][0]["sha256"] = json!("abc")
        }),
        ("unknown evidence field", |x| {
            x["findings"][0]["evidence"]["face_crop"] = json!("x.jpg")
        }),
        ("wrong schema version", |x| x["schema_version"] = json!(2)),
        ("string where a count goes", |x| {
            x["stats"]["model_calls"]["yunet"] = json!("many")
        }),
    ];
    for (what, edit) in edits {
        let mut bad = good.clone();
        edit(&mut bad);
        assert!(!v.is_valid(&bad), "{what} should be rejected");
    }
}

#[test]
fn rust_types_reject_what_the_schema_rejects() {
    let mut bad = serde_json::to_value(full_verdict()).unwrap();
    bad["findings"][0]["evidence"]["face_crop"] = json!("x.jpg");
    assert!(serde_json::from_value::<Verdict>(bad).is_err());
    let mut bad = serde_json::to_value(full_verdict()).unwrap();
    bad["findings"][0]["label"] = json!("no_faces");
    assert!(!validator().is_valid(&bad));
    assert!(serde_json::from_value::<Verdict>(bad).is_err());
}

#[test]
fn schema_labels_are_the_label_enum() {
    let listed: Vec<String> = schema()["$defs"]["finding"]["properties"]["label"]["enum"]
        .as_array()
        .expect("label enum in the schema")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let ours: Vec<String> = Label::ALL.iter().map(|l| l.as_str().to_string()).collect();
    assert_eq!(listed, ours);
    // Every label validates in a finding.
    let v = validator();
    for l in Label::ALL {
        let mut good = serde_json::to_value(full_verdict()).unwrap();
        good["findings"][0]["label"] = json!(l.as_str());
        assert_eq!(errors(&v, &good), Vec::<String>::new(), "{l}");
        assert_eq!(
            serde_json::from_value::<Verdict>(good).unwrap().findings[0].label,
            l
        );
    }
}
