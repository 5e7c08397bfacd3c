//! The shipped policy loads; broken policies fail naming the field; the shipped text rules catch contact
//! details, payment requests and profanity in English and Chinese, and stay quiet on lesson text.

use classguard::policy::{decide, Action, Policy, PolicyError, TextHit};
use classguard::verdict::{Decision, Evidence, Finding, Label, ModelRef, Severity, Track};

fn classroom() -> Policy {
    Policy::embedded().expect("shipped classroom.toml loads")
}

fn labels(hits: &[TextHit]) -> Vec<&str> {
    hits.iter().map(|h| h.label.as_str()).collect()
}

fn has(hits: &[TextHit], label: &str, matched_contains: &str) -> bool {
    hits.iter()
        .any(|h| h.label.as_str() == label && h.matched.contains(matched_contains))
}

#[test]
fn shipped_policy_loads_from_file_and_embedded_alike() {
    let embedded = classroom();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/classroom.toml");
    let from_file = Policy::from_file(path.as_ref()).unwrap();
    assert_eq!(embedded.fingerprint(), from_file.fingerprint());
    assert_eq!(
        Policy::load(None).unwrap().fingerprint(),
        embedded.fingerprint()
    );
    assert_eq!(embedded.face.identity_threshold, 0.363);
    assert!(!embedded.evidence.keep_face_crops);
    assert_eq!(embedded.decision.action_for(Label::Nudity), Action::Block);
}

#[test]
fn every_policy_in_pipelines_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Policy::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// The classroom policy with one `key = value` line replaced or added in `section`.
fn classroom_with(section: &str, line: &str) -> String {
    let base = include_str!("../pipelines/classroom.toml");
    let key = line.split('=').next().unwrap().trim();
    let header = format!("[{section}]\n");
    let start = base
        .find(&header)
        .unwrap_or_else(|| panic!("no [{section}]"))
        + header.len();
    let end = base[start..]
        .find("\n[")
        .map_or(base.len(), |i| start + i + 1);
    let body: String = base[start..end]
        .lines()
        .filter(|l| l.split('=').next().unwrap().trim() != key)
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{}{line}\n{body}{}", &base[..start], &base[end..])
}

fn invalid(text: &str) -> PolicyError {
    Policy::from_toml_str(text, "test.toml").expect_err("policy must be rejected")
}

#[test]
fn out_of_range_values_name_the_field_and_file() {
    let cases = [
        (
            "face",
            "identity_threshold = 1.5",
            "face.identity_threshold",
        ),
        (
            "face",
            "detection_score_min = -0.1",
            "face.detection_score_min",
        ),
        ("nudity", "threshold = 2.0", "nudity.threshold"),
        (
            "nudity",
            "corroboration = { k = 4, n = 3 }",
            "nudity.corroboration.k",
        ),
        (
            "face",
            "identity_corroboration = { k = 1, n = 0 }",
            "face.identity_corroboration.n",
        ),
        (
            "speech",
            "vad_neg_threshold = 0.9",
            "speech.vad_neg_threshold",
        ),
        ("gates", "whisper_batch = 0", "gates.whisper_batch"),
        ("gates", "whisper_batch = 64", "gates.whisper_batch"),
        ("limits", "max_file_bytes = 0", "limits.max_file_bytes"),
        (
            "face",
            "no_face_min_fraction = 0.0",
            "face.no_face_min_fraction",
        ),
        (
            "face",
            "no_face_min_fraction = 1.5",
            "face.no_face_min_fraction",
        ),
        ("evidence", "retention_days = 0", "evidence.retention_days"),
    ];
    for (section, line, field) in cases {
        let e = invalid(&classroom_with(section, line));
        assert_eq!(e.field(), Some(field), "{line}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("test.toml") && msg.contains(field),
            "{line}: {msg}"
        );
    }
}

#[test]
fn unknown_fields_and_bad_types_are_parse_errors_naming_the_key() {
    let e = invalid(&classroom_with("face", "identity_treshold = 0.4"));
    assert!(matches!(e, PolicyError::Parse { .. }));
    assert!(e.to_string().contains("identity_treshold"), "{e}");
    let e = invalid(&classroom_with("face", "min_face_px = \"big\""));
    assert!(e.to_string().contains("min_face_px"), "{e}");
    let e = invalid(&classroom_with("models", "nudity = \"nudenet2\""));
    assert!(e.to_string().contains("nudenet2"), "{e}");
    let e = invalid("version = \"1\"\n");
    assert!(e.to_string().contains("name"), "{e}");
}

#[test]
fn bad_text_rules_name_the_rule() {
    let base = include_str!("../pipelines/classroom.toml");
    let bad_regex =
        format!("{base}\n[[text_rules]]\nid = \"x\"\nlabel = \"profanity\"\npattern = '(oops'\n");
    let e = invalid(&bad_regex);
    assert!(e.field().unwrap().ends_with("].pattern"), "{e}");
    let dup = format!(
        "{base}\n[[text_rules]]\nid = \"profanity.en\"\nlabel = \"profanity\"\nwords = [\"x\"]\n"
    );
    let e = invalid(&dup);
    assert!(
        e.field().unwrap().ends_with("].id") && e.to_string().contains("duplicate"),
        "{e}"
    );
    let unknown_label =
        format!("{base}\n[[text_rules]]\nid = \"y\"\nlabel = \"profanityy\"\nwords = [\"x\"]\n");
    let e = invalid(&unknown_label);
    assert!(matches!(e, PolicyError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("profanityy"), "{e}");
    // A known label the policy's own table leaves out is refused too: nothing would decide it.
    let unmapped = "name = \"m\"\nversion = \"1\"\n[decision.labels]\n\
                    nudity = { action = \"block\", severity = \"critical\" }\n\
                    [[text_rules]]\nid = \"y\"\nlabel = \"profanity\"\nwords = [\"x\"]\n";
    let e = invalid(unmapped);
    assert!(e.field().unwrap().ends_with("].label"), "{e}");
}

#[test]
fn read_error_names_the_file() {
    let e = Policy::from_file("/nonexistent/policy.toml".as_ref()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/policy.toml"), "{e}");
}

#[test]
fn nudenet_is_opt_in() {
    use classguard::policy::NudityModel;
    assert_eq!(classroom().models.nudity, NudityModel::OpenNsfw);
    let p = Policy::from_toml_str(&classroom_with("models", "nudity = \"nudenet\""), "t").unwrap();
    assert_eq!(p.models.nudity, NudityModel::Nudenet);
    assert_ne!(p.fingerprint(), classroom().fingerprint());
}

#[test]
fn the_brief_sentence() {
    let p = classroom();
    let text = "Add me on WeChat, my id is teacher123, and pay me by PayPal.";
    let hits = p.text().scan(text);
    assert!(has(&hits, "contact_info", "WeChat"), "{hits:#?}");
    assert!(has(&hits, "contact_info", "teacher123"), "{hits:#?}");
    assert!(has(&hits, "payment_solicitation", "PayPal"), "{hits:#?}");
    for h in &hits {
        assert_eq!(&text[h.span.0..h.span.1], h.matched);
    }
}

#[test]
fn ocr_lines_with_contact_details() {
    let p = classroom();
    for line in ["+86 138 0013 8000", "teacher.li@example.com"] {
        let hits = p.text().scan(line);
        assert_eq!(labels(&hits), vec!["contact_info"], "{line}: {hits:#?}");
        assert_eq!(hits[0].matched, line, "whole line is the match");
        assert_eq!(hits[0].severity, Severity::High);
    }
}

#[test]
fn english_positives() {
    let p = classroom();
    let cases = [
        ("Call me at 13800138000 tonight", "contact_info"),
        ("Call 010-12345678", "contact_info"),
        ("Tel: 0086 10 1234 5678", "contact_info"),
        ("my wechat is teacher123", "contact_info"),
        ("skype: li.teacher", "contact_info"),
        ("My number is +1 (415) 555-0100.", "contact_info"),
        ("text 415-555-0100", "contact_info"),
        ("+44 20 7946 0958", "contact_info"),
        (
            "my phone is one three eight zero zero one three eight zero zero zero",
            "contact_info",
        ),
        ("write to teacher dot li at example dot com", "contact_info"),
        ("mail me: Li.Wei+class@school.edu.cn", "contact_info"),
        (
            "WhatsApp me, my WhatsApp number is 4155550100",
            "contact_info",
        ),
        ("WeChat ID: teacher_li88", "contact_info"),
        ("find me on Telegram: @teacher_li", "contact_info"),
        ("QQ: 12345678", "contact_info"),
        ("you can pay me directly next time", "payment_solicitation"),
        (
            "let's do it outside the platform, it's cheaper",
            "payment_solicitation",
        ),
        ("send me the money by bank transfer", "payment_solicitation"),
        ("Venmo works too", "payment_solicitation"),
        ("this is fucking hard", "profanity"),
        ("oh sh1t", "profanity"),
        ("what the f*ck", "profanity"),
        ("what the f**k", "profanity"),
        ("you're an a$$hole", "profanity"),
        ("Damn it", "profanity"),
    ];
    for (text, label) in cases {
        let hits = p.text().scan(text);
        assert!(
            labels(&hits).contains(&label),
            "{text:?} should give {label}: {hits:#?}"
        );
    }
}

#[test]
fn chinese_positives() {
    let p = classroom();
    let cases = [
        ("我的微信号 abc123", "contact_info"),
        ("加我微信，课后聊", "contact_info"),
        ("请添加老师的QQ", "contact_info"),
        ("我的qq号是12345678吧", "contact_info"),
        ("手机13800138000", "contact_info"),
        ("电话是一三八零零一三八零零零", "contact_info"),
        ("邮箱 teacher@qq.com吧", "contact_info"),
        ("vx: teacher_li", "contact_info"),
        ("用支付宝付吧", "payment_solicitation"),
        ("微信支付也可以", "payment_solicitation"),
        ("我们私下付款，便宜一点", "payment_solicitation"),
        ("直接转账给我", "payment_solicitation"),
        ("你这个傻逼", "profanity"),
        ("他妈的", "profanity"),
        ("傻B", "profanity"),
    ];
    for (text, label) in cases {
        let hits = p.text().scan(text);
        assert!(
            labels(&hits).contains(&label),
            "{text:?} should give {label}: {hits:#?}"
        );
        for h in &hits {
            assert_eq!(&text[h.span.0..h.span.1], h.matched);
        }
    }
}

#[test]
fn ordinary_lesson_text_gives_no_hits() {
    let p = classroom();
    let lesson = [
        "Today we learn fractions: 3/4 + 1/4 = 1, and 2/3 of 9 is 6.",
        "Count with me: 1 2 3 4 5 6 7 8 9 10",
        "one two three four five six seven eight nine ten, well done!",
        "The first moon landing was in 1969; the Berlin Wall fell in 1989; now it is 2024.",
        "An apple costs $1.25 and a pear costs ¥3.50. How much do 12 apples cost? Answer: $15.00",
        "Page 138, exercise 12: solve 2x + 3 = 7, then 10 - 4 * 2.",
        "Look at line 3 of the poem and draw a line from A to B.",
        "Please pay attention and send me your homework by Friday.",
        "The class assessment covers Dickens, Scunthorpe and the shiitake mushroom.",
        "Energy transfer in a food chain; a bank of the river; the platform of a train station.",
        "We will have a Skype call with the other class. Signal: noise ratio. Line number twelve.",
        "Look at khanacademy.org for more exercises, or look at the board.",
        "Look at the dot com bubble of 2000.",
        "Telegram was invented in the 19th century; WhatsApp is an app; the QQ plot of residuals.",
        "We have 365 days in a year, 1,000,000 people, pi is 3.14159265, light travels 3 x 10^8 m/s.",
        "Coordinates 39.9042, 116.4074; the date 2019-05-12 10:30:00.",
        "The time is 10:30, the temperature is -5 degrees, and the score was 3-2.",
        "ISBN 978-3-16-148410-0, published 2019-05-12.",
        "Multiply 123 by 456: the result is 56088.",
        "Tel Aviv, text analysis, a cocktail of chemicals, the title of the book.",
        "今天我们学习分数，3/4加1/4等于1。",
        "请打开课本第138页，做第12题。",
        "一二三四五，上山打老虎。",
        "小明有12元钱，买了3支笔，每支2元，还剩多少钱？",
        "我们用微信小程序提交作业。",
        "妈妈的生日是1985年6月1日。",
        "参加比赛的同学请举手。",
    ];
    for text in lesson {
        let hits = p.text().scan(text);
        assert!(hits.is_empty(), "{text:?}: {hits:#?}");
    }
}

#[test]
fn language_filter_applies_only_to_language_specific_rules() {
    let p = classroom();
    // The Chinese list does not run on an English transcript; e-mail (lang any) still does.
    assert!(p.text().scan_lang("你这个傻逼", "en").is_empty());
    assert!(!p.text().scan_lang("你这个傻逼", "zh").is_empty());
    assert!(!p
        .text()
        .scan_lang("teacher.li@example.com", "zh")
        .is_empty());
}

fn finding(label: Label) -> Finding {
    Finding {
        label,
        severity: Severity::Medium,
        track: Track::Camera,
        start_ms: 0,
        end_ms: 1000,
        confidence: 0.9,
        model: ModelRef {
            id: "m".into(),
            sha256: "0".repeat(64),
        },
        rule_id: format!("test.{label}"),
        evidence: Evidence::default(),
        reason: "test".into(),
    }
}

#[test]
fn decision_follows_the_policy_table() {
    let p = classroom();
    assert_eq!(decide(&p, &[], false), Decision::Pass);
    assert_eq!(
        decide(&p, &[], true),
        Decision::Review,
        "partial audit cannot pass"
    );
    assert_eq!(
        decide(&p, &[finding(Label::Silence)], false),
        Decision::Pass
    );
    assert_eq!(
        decide(&p, &[finding(Label::ContactInfo)], false),
        Decision::Review
    );
    assert_eq!(
        decide(&p, &[finding(Label::IdentityMismatch)], false),
        Decision::Review
    );
    assert_eq!(
        decide(
            &p,
            &[
                finding(Label::Silence),
                finding(Label::Nudity),
                finding(Label::Profanity)
            ],
            false
        ),
        Decision::Block
    );
    assert_eq!(decide(&p, &[finding(Label::Nudity)], true), Decision::Block);
    // A label the policy's table leaves out gets `unknown_label`.
    let sparse = Policy::from_toml_str(
        "name = \"m\"\nversion = \"1\"\n[decision]\nunknown_label = \"block\"\n\
         [decision.labels]\nnudity = { action = \"block\", severity = \"critical\" }\n",
        "sparse.toml",
    )
    .unwrap();
    assert_eq!(
        decide(&sparse, &[finding(Label::Silence)], false),
        Decision::Block
    );
}

/// Every label the built-in checks produce, with the action the shipped policies must give it.
const BUILT_IN: [(&str, Action); 9] = [
    ("nudity", Action::Block),
    ("identity_mismatch", Action::Review),
    ("identity_unverified", Action::Review),
    ("no_face", Action::Review),
    ("multiple_faces", Action::Review),
    ("contact_info", Action::Review),
    ("payment_solicitation", Action::Review),
    ("profanity", Action::Review),
    ("silence", Action::Pass),
];

#[test]
fn shipped_policies_map_every_built_in_label_explicitly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let p = Policy::from_file(&path).unwrap();
        for (label, action) in BUILT_IN {
            let label: Label = label.parse().unwrap();
            let entry = p.decision.labels.get(&label).unwrap_or_else(|| {
                panic!(
                    "{}: `{label}` missing from [decision.labels]",
                    path.display()
                )
            });
            assert_eq!(entry.action, action, "{}: {label}", path.display());
        }
        assert_eq!(p.face.no_face_min_fraction, 0.3, "{}", path.display());
    }
    // A policy that names no labels gets the same table from the defaults.
    let minimal = Policy::from_toml_str("name = \"m\"\nversion = \"1\"\n", "m").unwrap();
    for (label, action) in BUILT_IN {
        let parsed: Label = label.parse().unwrap();
        assert_eq!(minimal.decision.action_for(parsed), action, "{label}");
    }
    assert_eq!(
        BUILT_IN.len(),
        Label::ALL.len(),
        "every label is listed above"
    );
    assert_eq!(minimal.face.no_face_min_fraction, 0.3);
}

#[test]
fn severity_comes_from_the_rule_then_the_label_never_from_the_rule_name() {
    let p = classroom();
    // Text rules carry their own severity: the mild profanity list is `low`, the label `medium`.
    assert_eq!(
        p.severity_of("profanity.en.mild", Label::Profanity),
        Severity::Low
    );
    assert_eq!(
        p.severity_of("profanity.en", Label::Profanity),
        Severity::Medium
    );
    assert_eq!(
        p.severity_of("contact.email", Label::ContactInfo),
        Severity::High
    );
    // Built-in checks take their label's severity, whatever their rule id looks like.
    assert_eq!(
        p.severity_of("face.no_face", Label::NoFace),
        Severity::Medium
    );
    assert_eq!(
        p.severity_of("speech.silence", Label::Silence),
        Severity::Info
    );
    assert_eq!(
        p.severity_of("nudity.camera", Label::Nudity),
        Severity::Critical
    );
    assert_eq!(
        p.severity_of("face.identity_never_verified", Label::IdentityUnverified),
        Severity::Medium
    );
    // A rule id that merely contains "contact" is not a text rule.
    assert_eq!(
        p.severity_of("face.contact_lens", Label::NoFace),
        Severity::Medium
    );
    // A policy that changes a label's severity changes the built-in findings' severity.
    let text = classroom_with(
        "decision.labels",
        "no_face = { action = \"review\", severity = \"high\" }",
    );
    let changed = Policy::from_toml_str(&text, "t.toml").unwrap();
    assert_eq!(
        changed.severity_of("face.no_face", Label::NoFace),
        Severity::High
    );
}
