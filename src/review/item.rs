//! The item page: a recording's timeline, findings and evidence, with the claim that keeps two
//! reviewers off one item. Evidence is reachable only by random ids handed to signed-in staff;
//! images come blurred and grey unless revealed, and the original (or the audio) only through
//! a CSRF-checked reveal that is audit-logged as "evidence viewed".

use std::io::Cursor;
use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{random_token, Staff};
use super::{html, secure, templates, ReviewError, ReviewShared};
use crate::store::{now_ms, ClaimState, DecisionRow, FindingRow, ItemDetail, ReviewItemRow, Store};
use crate::verdict::{Finding, Label, Verdict};

/// Evidence files larger than this are not served (a slice or clip is far smaller).
const MAX_EVIDENCE_BYTES: u64 = 64 << 20;
/// Longer side of the blurred rendition, pixels.
const RENDITION_SIDE: u32 = 320;
const RENDITION_BLUR_SIGMA: f32 = 6.0;

/// One finding as the page shows it.
pub struct FindingView {
    pub row: FindingRow,
    /// The verdict's finding of the same index (model, confidence, excerpts).
    pub finding: Option<Finding>,
    pub image: Option<String>,
    pub audio: Option<String>,
    /// For identity findings: what the camera was compared with.
    pub identity_note: Option<String>,
}

pub struct ItemView {
    pub item: ReviewItemRow,
    pub verdict: Verdict,
    pub findings: Vec<FindingView>,
    /// `None` when the item is decided (nobody holds it).
    pub claim: Option<ClaimState>,
    pub history: Vec<DecisionRow>,
}

/// The registered evidence file a verdict's relative path names (`evidence/x.jpg` under the
/// recording's output folder). Only relative paths without `..` are looked up, so a verdict
/// cannot point the page at an arbitrary file.
pub fn resolve_evidence<'a>(registered: &'a [String], rel: &str) -> Option<&'a str> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return None;
    }
    let suffix = format!("/{rel}");
    registered
        .iter()
        .map(String::as_str)
        .find(|r| *r == rel || r.ends_with(&suffix))
}

fn identity_note(store: &Store, teacher: Option<&str>, f: &Finding) -> Result<String, ReviewError> {
    let Some(t) = teacher else {
        return Ok("No teacher was named for this recording, so there is nothing enrolled to compare with.".into());
    };
    let n = store.templates_for(t, &f.model.id)?.len();
    Ok(format!(
        "Compared with {n} enrolled face template(s) of teacher {t} (model {}). Enrolled photos \
         are not kept, only templates: compare the thumbnail with the verified photo in the \
         teacher's platform record.",
        f.model.id
    ))
}

/// Builds the page's data, taking (or renewing) the caller's claim on an open item.
fn load(
    store: &Store,
    detail: ItemDetail,
    user_id: i64,
    lease_ms: i64,
) -> Result<ItemView, ReviewError> {
    let ItemDetail {
        item,
        verdict_json,
        findings,
        evidence_paths,
    } = detail;
    let verdict: Verdict = serde_json::from_str(&verdict_json)
        .map_err(|e| ReviewError::Internal(format!("stored verdict {}: {e}", item.verdict_id)))?;
    let paired = verdict.findings.len() == findings.len();
    let mut views = Vec::with_capacity(findings.len());
    for (i, row) in findings.into_iter().enumerate() {
        let finding = paired.then(|| verdict.findings[i].clone());
        let evidence_id = |rel: Option<&str>, kind: &str| -> Result<Option<String>, ReviewError> {
            let Some(path) = rel.and_then(|r| resolve_evidence(&evidence_paths, r)) else {
                return Ok(None);
            };
            Ok(Some(store.review_evidence_id(
                item.id,
                kind,
                path,
                &random_token(),
            )?))
        };
        let (image, audio) = match &finding {
            Some(f) => (
                evidence_id(f.evidence.slice_path.as_deref(), "image")?,
                evidence_id(f.evidence.audio_clip.as_deref(), "audio")?,
            ),
            None => (None, None),
        };
        let identity_note = match &finding {
            Some(f) if matches!(f.label, Label::IdentityMismatch | Label::IdentityUnverified) => {
                Some(identity_note(store, item.teacher_id.as_deref(), f)?)
            }
            _ => None,
        };
        views.push(FindingView {
            row,
            finding,
            image,
            audio,
            identity_note,
        });
    }
    let claim = if item.state == "open" {
        store.review_claim(item.id, user_id, now_ms(), lease_ms)?
    } else {
        None
    };
    let history = store.review_history(item.id)?;
    Ok(ItemView {
        item,
        verdict,
        findings: views,
        claim,
        history,
    })
}

pub async fn page(
    State(review): State<ReviewShared>,
    staff: Staff,
    UrlPath(id): UrlPath<i64>,
) -> Result<Response, ReviewError> {
    let lease = review.settings.claim_lease.as_millis() as i64;
    let uid = staff.user.id;
    let entry = staff.audit("item_opened", Some(id), String::new());
    let view = review
        .db(move |s| {
            let Some(detail) = s.review_item(id)? else {
                return Ok(None);
            };
            s.review_audit(&entry)?;
            Ok(Some(load(s, detail, uid, lease)))
        })
        .await?
        .ok_or(ReviewError::NotFound)??;
    let body = templates::item_page(&staff, &view, &review.policy, lease);
    Ok(html(StatusCode::OK, body))
}

/// `POST /review/items/{id}/claim`: the page's keep-alive. 200 with the lease while the caller
/// holds it, 409 when someone else does (the page then disables its forms).
pub async fn claim(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, None)?;
    let lease = review.settings.claim_lease.as_millis() as i64;
    let uid = staff.user.id;
    let state = review
        .db(move |s| s.review_claim(id, uid, now_ms(), lease))
        .await?;
    let (status, body) = match state {
        Some(c) if c.mine => (
            StatusCode::OK,
            serde_json::json!({ "mine": true, "until_ms": c.until_ms }),
        ),
        Some(c) => (
            StatusCode::CONFLICT,
            serde_json::json!({ "mine": false, "holder": c.holder_name, "until_ms": c.until_ms }),
        ),
        None => (
            StatusCode::CONFLICT,
            serde_json::json!({ "mine": false, "holder": null }),
        ),
    };
    Ok(secure((status, Json(body)).into_response()))
}

async fn read_evidence(path: &str) -> Result<Vec<u8>, ReviewError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|_| ReviewError::NotFound)?;
    if !meta.is_file() || meta.len() > MAX_EVIDENCE_BYTES {
        return Err(ReviewError::NotFound);
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| ReviewError::Evidence(e.to_string()))
}

/// The blurred, greyscale, downscaled version of an evidence image, as JPEG.
pub fn rendition(bytes: &[u8]) -> Result<Vec<u8>, ReviewError> {
    let img = image::load_from_memory(bytes).map_err(|e| ReviewError::Evidence(e.to_string()))?;
    let small = img.resize(
        RENDITION_SIDE,
        RENDITION_SIDE,
        image::imageops::FilterType::Triangle,
    );
    let grey = image::imageops::grayscale(&small);
    let blurred = image::imageops::blur(&grey, RENDITION_BLUR_SIGMA);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 70)
        .encode_image(&blurred)
        .map_err(|e| ReviewError::Evidence(e.to_string()))?;
    Ok(out.into_inner())
}

fn content_type(path: &str) -> &'static str {
    match Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("wav") => "audio/wav",
        Some("webm") => "audio/webm",
        Some("ogg" | "opus") => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// `GET /review/evidence/{id}`: the blurred rendition of an image. Audio has no muted preview:
/// it is only served by [`reveal`].
pub async fn evidence(
    State(review): State<ReviewShared>,
    _staff: Staff,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ReviewError> {
    let ev = review
        .db(move |s| s.review_evidence(&id))
        .await?
        .ok_or(ReviewError::NotFound)?;
    if ev.kind != "image" {
        return Err(ReviewError::RevealRequired);
    }
    let bytes = read_evidence(&ev.path).await?;
    let jpeg = tokio::task::spawn_blocking(move || rendition(&bytes))
        .await
        .map_err(|e| ReviewError::Internal(e.to_string()))??;
    Ok(secure(
        ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
    ))
}

/// `POST /review/evidence/{id}/reveal`: the original file, audit-logged as evidence viewed.
pub async fn reveal(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, None)?;
    let ev = review
        .db(move |s| s.review_evidence(&id))
        .await?
        .ok_or(ReviewError::NotFound)?;
    let bytes = read_evidence(&ev.path).await?;
    let entry = staff.audit(
        "evidence_viewed",
        Some(ev.item_id),
        format!("evidence {} ({})", ev.id, ev.kind),
    );
    review.db(move |s| s.review_audit(&entry)).await?;
    tracing::info!(user = staff.user.id, recording = %ev.recording_id, kind = %ev.kind, "evidence viewed");
    Ok(secure(
        ([(header::CONTENT_TYPE, content_type(&ev.path))], bytes).into_response(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_resolves_only_plain_relative_paths_that_are_registered() {
        let reg = vec![
            "/data/recordings/rec-1/evidence/nudity-000001000.jpg".to_string(),
            "/data/recordings/rec-1/evidence/contact_info-000002000.wav".to_string(),
        ];
        assert_eq!(
            resolve_evidence(&reg, "evidence/nudity-000001000.jpg"),
            Some(reg[0].as_str())
        );
        assert_eq!(resolve_evidence(&reg, "evidence/other.jpg"), None);
        assert_eq!(
            resolve_evidence(&reg, "../rec-1/evidence/nudity-000001000.jpg"),
            None
        );
        assert_eq!(
            resolve_evidence(&reg, "/data/recordings/rec-1/evidence/nudity-000001000.jpg"),
            None
        );
        assert_eq!(
            resolve_evidence(&reg, "000001000.jpg"),
            None,
            "whole components only"
        );
        assert_eq!(resolve_evidence(&reg, ""), None);
    }

    #[test]
    fn rendition_is_small_grey_and_blurred() {
        // A sharp red/blue checkerboard: after the rendition every pixel is grey and neighbours
        // differ little.
        let img = image::RgbImage::from_fn(640, 480, |x, y| {
            if (x / 8 + y / 8) % 2 == 0 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let out = rendition(png.get_ref()).unwrap();
        let back = image::load_from_memory(&out).unwrap();
        assert_eq!((back.width(), back.height()), (320, 240));
        assert_eq!(back.color(), image::ColorType::L8, "greyscale JPEG");
        let g = back.to_luma8();
        let max_step = g
            .enumerate_pixels()
            .filter(|(x, _, _)| *x + 1 < g.width())
            .map(|(x, y, p)| (p[0] as i32 - g.get_pixel(x + 1, y)[0] as i32).abs())
            .max()
            .unwrap();
        assert!(max_step < 12, "still sharp: step {max_step}");
        assert!(rendition(b"not an image").is_err());
    }

    #[test]
    fn identity_findings_say_what_the_camera_was_compared_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.enroll_template("t-17", "sface", &[0.5; 4]).unwrap();
        store.enroll_template("t-17", "sface", &[0.25; 4]).unwrap();
        let f = Finding {
            label: Label::IdentityMismatch,
            severity: crate::verdict::Severity::High,
            track: crate::verdict::Track::Camera,
            start_ms: 0,
            end_ms: 5_000,
            confidence: 0.8,
            model: crate::verdict::ModelRef {
                id: "sface".into(),
                sha256: "0".repeat(64),
            },
            rule_id: "face.identity_mismatch".into(),
            evidence: Default::default(),
            reason: "x".into(),
        };
        let note = identity_note(&store, Some("t-17"), &f).unwrap();
        assert!(
            note.contains("2 enrolled face template(s) of teacher t-17 (model sface)"),
            "{note}"
        );
        let none = identity_note(&store, None, &f).unwrap();
        assert!(none.contains("No teacher"), "{none}");
        let other = identity_note(&store, Some("t-99"), &f).unwrap();
        assert!(other.contains("0 enrolled"), "{other}");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("/x/evidence/a-1.jpg"), "image/jpeg");
        assert_eq!(content_type("/x/evidence/a-1.WAV"), "audio/wav");
        assert_eq!(content_type("/x/evidence/a"), "application/octet-stream");
    }
}
