//! HTML of every review page, built as strings with every value escaped ([`esc`]). No inline
//! script or style (the Content-Security-Policy forbids both): behaviour is in `review.js` and
//! looks in `review.css`, both embedded in the binary; the timeline is SVG geometry.

use std::fmt::Write;

use axum::http::StatusCode;

use super::auth::{Role, Staff};
use super::item::{FindingView, ItemView};
use super::metrics::Summary;
use super::queue::QueueQuery;
use crate::policy::{Policy, ReviewActKind};
use crate::store::{AuditRow, DecisionRow, ReviewItemRow, UserRow};

pub const SCRIPT: &str = include_str!("review.js");
pub const STYLE: &str = include_str!("review.css");

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `k=v&k=v` with percent-encoding of everything but unreserved characters.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn severity_name(rank: i64) -> &'static str {
    match rank {
        4 => "critical",
        3 => "high",
        2 => "medium",
        1 => "low",
        0 => "info",
        _ => "none",
    }
}

/// `2026-12-02 16:31:20 UTC`.
pub fn fmt_time(ms: i64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "?".into())
}

/// `42 s`, `5 min`, `3 h 5 min`, `2 d 4 h`.
pub fn fmt_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Media time `m:ss.s`.
pub fn fmt_media(ms: u64) -> String {
    format!("{}:{:04.1}", ms / 60_000, (ms % 60_000) as f64 / 1000.0)
}

fn nav(staff: &Staff) -> String {
    let mut links = vec![("/review", "Queue")];
    if staff.role >= Role::Lead {
        links.push(("/review/metrics", "Metrics"));
        links.push(("/review/audit", "Audit log"));
    }
    if staff.role >= Role::Admin {
        links.push(("/review/users", "Users"));
    }
    links.push(("/review/settings", "Settings"));
    let mut s = String::from("<nav><span class=\"brand\">ClassGuard review</span>");
    for (href, text) in links {
        let _ = write!(s, "<a href=\"{href}\">{text}</a>");
    }
    let _ = write!(
        s,
        "<span class=\"who\">{} ({})</span>\
         <form method=\"post\" action=\"/review/logout\" class=\"inline\">{}\
         <button type=\"submit\" id=\"sign-out\">Sign out</button></form></nav>",
        esc(&staff.user.name),
        staff.role.as_str(),
        csrf_field(staff)
    );
    s
}

fn csrf_field(staff: &Staff) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&staff.session.csrf)
    )
}

fn layout(title: &str, staff: Option<&Staff>, page: &str, extra: &str, body: &str) -> String {
    let meta = staff
        .map(|s| {
            format!(
                "<meta name=\"csrf-token\" content=\"{}\">",
                esc(&s.session.csrf)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ClassGuard review</title>{meta}\
         <link rel=\"stylesheet\" href=\"/review/static/review.css\">\
         <script src=\"/review/static/review.js\" defer></script></head>\
         <body data-page=\"{page}\"{extra}><header>{}</header><main>{body}</main></body></html>\n",
        esc(title),
        staff.map(nav).unwrap_or_else(|| {
            "<nav><span class=\"brand\">ClassGuard review</span></nav>".into()
        }),
    )
}

pub fn error_page(status: StatusCode, message: &str) -> String {
    let body = format!(
        "<h1>{} {}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"/review\">Back to the queue</a></p>",
        status.as_u16(),
        esc(status.canonical_reason().unwrap_or("")),
        esc(message)
    );
    layout("Error", None, "error", "", &body)
}

pub fn login_page(token: &str, message: Option<&str>) -> String {
    let msg = message
        .map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{msg}\
         <form method=\"post\" action=\"/review/login\" class=\"login\" id=\"login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Name <input name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">Accounts are made with <code>classguard user add</code>.</p>",
        esc(token)
    );
    layout("Sign in", None, "login", "", &body)
}

fn select(name: &str, current: Option<&str>, options: &[(&str, &str)]) -> String {
    let mut s = format!("<select name=\"{name}\" id=\"filter-{name}\">");
    for (value, text) in options {
        let sel = if current == Some(*value) || (current.is_none() && value.is_empty()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            s,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(value),
            esc(text)
        );
    }
    s.push_str("</select>");
    s
}

pub fn queue_page(
    staff: &Staff,
    q: &QueueQuery,
    rows: &[ReviewItemRow],
    counts: &[(String, i64)],
    now_ms: i64,
) -> String {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let (state, label, track, decision, teacher, from, to) = (
        v(&q.state),
        v(&q.label),
        v(&q.track),
        v(&q.decision),
        v(&q.teacher),
        v(&q.from),
        v(&q.to),
    );
    let mut labels: Vec<(&str, &str)> = vec![("", "any label")];
    labels.extend(
        crate::verdict::Label::ALL
            .iter()
            .map(|l| (l.as_str(), l.as_str())),
    );
    let mut b = String::from("<h1>Queue</h1>");
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" action=\"/review\" id=\"filters\">\
         <label>State {}</label><label>Label {}</label><label>Track {}</label><label>Model {}</label>\
         <label>Teacher <input name=\"teacher\" value=\"{}\" size=\"10\"></label>\
         <label>From <input type=\"date\" name=\"from\" value=\"{}\"></label>\
         <label>To <input type=\"date\" name=\"to\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button> <a href=\"/review\">Clear</a></form>",
        select(
            "state",
            Some(if state.is_empty() { "open" } else { &state }),
            &[("open", "open"), ("decided", "decided"), ("all", "all")]
        ),
        select("label", Some(&label), &labels),
        select(
            "track",
            Some(&track),
            &[("", "any track"), ("camera", "camera"), ("desktop", "desktop"), ("microphone", "microphone")]
        ),
        select(
            "decision",
            Some(&decision),
            &[("", "any"), ("block", "block"), ("review", "review"), ("pass", "pass (QA sample)")]
        ),
        esc(&teacher),
        esc(&from),
        esc(&to),
    );
    b.push_str("<p class=\"counts\" id=\"label-counts\">By label: ");
    if counts.is_empty() {
        b.push_str("none");
    }
    for (l, n) in counts {
        let href = query_string(&[
            ("state", &state),
            ("label", l),
            ("track", &track),
            ("decision", &decision),
            ("teacher", &teacher),
            ("from", &from),
            ("to", &to),
        ]);
        let _ = write!(
            b,
            "<a class=\"count\" data-label=\"{0}\" href=\"/review?{1}\">{0} <b>{2}</b></a> ",
            esc(l),
            esc(&href),
            n
        );
    }
    b.push_str("</p>");
    if rows.is_empty() {
        b.push_str("<p id=\"empty\">Nothing to review here.</p>");
        return layout("Queue", Some(staff), "queue", "", &b);
    }
    b.push_str(
        "<table id=\"queue\"><thead><tr><th>Severity</th><th>Recording</th><th>Findings</th>\
         <th>Model</th><th>Teacher</th><th>Waiting</th><th>Status</th></tr></thead><tbody>",
    );
    for r in rows {
        let sev = severity_name(r.severity_rank);
        let status = if r.state == "decided" {
            format!(
                "decided: <b>{}</b>",
                esc(r.human_decision.as_deref().unwrap_or("?"))
            )
        } else {
            match (&r.claimed_by_name, r.claim_until_ms) {
                (Some(n), Some(until)) if until >= now_ms => {
                    format!("<span class=\"claimed\">claimed by {}</span>", esc(n))
                }
                _ => "open".into(),
            }
        };
        let _ = write!(
            b,
            "<tr data-item=\"{id}\" data-severity=\"{sev}\" data-href=\"/review/items/{id}\">\
             <td><span class=\"sev sev-{sev}\">{sev}</span></td>\
             <td><a href=\"/review/items/{id}\" class=\"open-item\">{rec}</a>{qa}</td>\
             <td>{labels} <span class=\"n\">({n})</span></td><td>{model}</td><td>{teacher}</td>\
             <td title=\"{created}\">{age}</td><td>{status}</td></tr>",
            id = r.id,
            rec = esc(&r.recording_id),
            qa = if r.qa_sample {
                " <span class=\"badge\">QA sample</span>"
            } else {
                ""
            },
            labels = esc(&r.labels.join(", ")),
            n = r.findings,
            model = esc(&r.model_decision),
            teacher = esc(r.teacher_id.as_deref().unwrap_or("-")),
            created = fmt_time(r.created_at_ms),
            age = fmt_duration(now_ms - r.created_at_ms),
        );
    }
    b.push_str(
        "</tbody></table><p class=\"hint\">Keys: <kbd>j</kbd>/<kbd>k</kbd> move, <kbd>Enter</kbd> opens.</p>",
    );
    layout("Queue", Some(staff), "queue", "", &b)
}

/// `<select name="reason">` with the policy's reasons for `kinds`, grouped by kind; option
/// elements carry `data-kind` so the page script can narrow them to the chosen action.
fn reason_select(policy: &Policy, kinds: &[ReviewActKind], id: &str) -> String {
    let mut s =
        format!("<select name=\"reason\" id=\"{id}\" required><option value=\"\">reason…</option>");
    for kind in kinds {
        let _ = write!(s, "<optgroup label=\"{}\">", kind.as_str());
        for r in policy.review.reasons_for(*kind) {
            let _ = write!(
                s,
                "<option value=\"{0}\" data-kind=\"{1}\">{2} ({0})</option>",
                esc(&r.code),
                kind.as_str(),
                esc(&r.title)
            );
        }
        s.push_str("</optgroup>");
    }
    s.push_str("</select>");
    s
}

const TRACKS: [&str; 3] = ["camera", "desktop", "microphone"];

fn timeline(view: &ItemView) -> String {
    let duration = view
        .verdict
        .recording
        .duration_ms
        .max(
            view.findings
                .iter()
                .map(|f| f.row.end_ms)
                .max()
                .unwrap_or(0),
        )
        .max(1);
    let (label_w, width, row_h) = (110.0, 1000.0, 28.0);
    let scale = (width - label_w) / duration as f64;
    let mut s = format!(
        "<section class=\"timeline\" id=\"timeline\"><h2>Timeline <span class=\"hint\">{} long</span></h2>\
         <svg viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"findings per track over time\">",
        fmt_media(duration),
        row_h * TRACKS.len() as f64 + 16.0
    );
    for (i, track) in TRACKS.iter().enumerate() {
        let y = i as f64 * row_h;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" class=\"track-name\">{track}</text>\
             <rect x=\"{label_w}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"lane\"/>",
            y + 18.0,
            y + 4.0,
            width - label_w,
            row_h - 8.0
        );
        for f in view.findings.iter().filter(|f| f.row.track == *track) {
            let x = label_w + f.row.start_ms as f64 * scale;
            let w = ((f.row.end_ms.saturating_sub(f.row.start_ms)) as f64 * scale).max(3.0);
            let _ = write!(
                s,
                "<a href=\"#finding-{id}\"><rect x=\"{x:.1}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" \
                 class=\"span sev-{sev} status-{st}\" data-finding=\"{id}\" data-track=\"{track}\">\
                 <title>{label} {start}–{end}</title></rect></a>",
                y + 4.0,
                row_h - 8.0,
                id = f.row.id,
                sev = esc(&f.row.severity),
                st = f.row.status.as_str(),
                label = esc(&f.row.label),
                start = fmt_media(f.row.start_ms),
                end = fmt_media(f.row.end_ms),
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{label_w}\" y=\"{y}\" class=\"tick\">0:00</text>\
         <text x=\"{width}\" y=\"{y}\" class=\"tick end\">{}</text></svg></section>",
        fmt_media(duration),
        y = row_h * TRACKS.len() as f64 + 12.0
    );
    s
}

fn finding_article(
    staff: &Staff,
    view: &ItemView,
    f: &FindingView,
    policy: &Policy,
    can_decide: bool,
) -> String {
    let r = &f.row;
    let mut s = format!(
        "<article class=\"finding\" id=\"finding-{id}\" data-finding=\"{id}\" data-status=\"{st}\">\
         <h3><span class=\"sev sev-{sev}\">{sev}</span> {label} <span class=\"track\">on the {track}</span> \
         <span class=\"when\">{start}–{end}</span> <span class=\"status status-{st}\">{st}</span></h3>\
         <p class=\"reason\">{reason}</p><dl class=\"facts\"><dt>Policy rule</dt><dd><code>{rule}</code></dd>",
        id = r.id,
        st = r.status.as_str(),
        sev = esc(&r.severity),
        label = esc(&r.label),
        track = esc(&r.track),
        start = fmt_media(r.start_ms),
        end = fmt_media(r.end_ms),
        reason = esc(&r.reason),
        rule = esc(&r.rule_id),
    );
    if let Some(fd) = &f.finding {
        let _ = write!(
            s,
            "<dt>Model</dt><dd><code>{}</code> <span class=\"hash\" title=\"{}\">{}</span></dd>\
             <dt>Confidence</dt><dd>{:.2}</dd>",
            esc(&fd.model.id),
            esc(&fd.model.sha256),
            esc(fd.model.sha256.get(..12).unwrap_or(&fd.model.sha256)),
            fd.confidence
        );
    }
    s.push_str("</dl><div class=\"evidence-row\">");
    if let Some(eid) = &f.image {
        let _ = write!(
            s,
            "<figure class=\"thumb\"><img class=\"evidence\" data-evidence=\"{0}\" data-state=\"blurred\" \
             src=\"/review/evidence/{0}\" alt=\"slice at {1}, blurred and grey until revealed\">\
             <figcaption><button type=\"button\" class=\"reveal\" data-evidence=\"{0}\" data-kind=\"image\">\
             Reveal image</button></figcaption></figure>",
            esc(eid),
            fmt_media(r.start_ms)
        );
    }
    if let Some(eid) = &f.audio {
        let _ = write!(
            s,
            "<div class=\"clip\"><audio controls preload=\"none\" muted data-evidence=\"{0}\" data-state=\"muted\"></audio>\
             <button type=\"button\" class=\"reveal\" data-evidence=\"{0}\" data-kind=\"audio\">Reveal audio</button></div>",
            esc(eid)
        );
    }
    if f.image.is_none() && f.audio.is_none() {
        s.push_str("<p class=\"hint\">No evidence file (expired, erased or never written).</p>");
    }
    s.push_str("</div>");
    if let Some(fd) = &f.finding {
        if let Some(t) = &fd.evidence.transcript_excerpt {
            let _ = write!(
                s,
                "<blockquote class=\"excerpt transcript\"><span>Transcript</span> {}</blockquote>",
                esc(t)
            );
        }
        if let Some(t) = &fd.evidence.ocr_excerpt {
            let _ = write!(
                s,
                "<blockquote class=\"excerpt ocr\"><span>On screen (OCR)</span> {}</blockquote>",
                esc(t)
            );
        }
    }
    if let Some(n) = &f.identity_note {
        let _ = write!(s, "<p class=\"note identity\">{}</p>", esc(n));
    }
    if let Some(n) = &r.reviewer_note {
        let _ = write!(s, "<p class=\"note\">Reviewer note: {}</p>", esc(n));
    }
    if view.item.state == "open" {
        let _ = write!(
            s,
            "<form method=\"post\" action=\"/review/items/{item}/decide\" class=\"finding-decision\">{csrf}\
             <input type=\"hidden\" name=\"version\" value=\"{version}\">\
             <input type=\"hidden\" name=\"target\" value=\"{fid}\">{reasons}\
             <input name=\"note\" placeholder=\"note (optional)\" maxlength=\"2000\">\
             <button type=\"submit\" name=\"action\" value=\"confirm\"{dis}>Confirm</button>\
             <button type=\"submit\" name=\"action\" value=\"dismiss\"{dis}>Dismiss</button></form>",
            item = view.item.id,
            csrf = csrf_field(staff),
            version = view.item.version,
            fid = r.id,
            reasons = reason_select(
                policy,
                &[ReviewActKind::Confirm, ReviewActKind::Dismiss],
                &format!("reason-{}", r.id)
            ),
            dis = if can_decide { "" } else { " disabled" },
        );
    }
    s.push_str("</article>");
    s
}

fn history_table(history: &[DecisionRow]) -> String {
    let mut s = String::from("<section id=\"history\"><h2>History</h2>");
    if history.is_empty() {
        s.push_str("<p class=\"hint\">No decision yet.</p></section>");
        return s;
    }
    s.push_str(
        "<table class=\"history\"><thead><tr><th>When</th><th>Who</th><th>Did</th><th>On</th>\
         <th>Reason</th><th>Note</th><th>Version</th><th>Outcome</th></tr></thead><tbody>",
    );
    for d in history {
        let _ = write!(
            s,
            "<tr data-action=\"{a}\"><td>{}</td><td>{}</td><td>{a}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_time(d.created_at_ms),
            esc(&d.user_name),
            d.finding_id
                .map_or_else(|| "recording".to_string(), |f| format!("finding {f}")),
            esc(&d.reason_code),
            esc(d.note.as_deref().unwrap_or("")),
            d.item_version,
            esc(d.outcome.as_deref().unwrap_or("")),
            a = esc(&d.action),
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

pub fn item_page(staff: &Staff, view: &ItemView, policy: &Policy, lease_ms: i64) -> String {
    let item = &view.item;
    let v = &view.verdict;
    let mine = view.claim.as_ref().is_some_and(|c| c.mine);
    let can_decide = mine && item.state == "open";
    let mut b = format!(
        "<h1>Recording <code>{}</code></h1><p class=\"meta\">Model decision <b id=\"model-decision\">{}</b> · \
         worst severity <span class=\"sev sev-{sev}\">{sev}</span> · {} long · teacher {} · audited {} · \
         version <span id=\"version\">{}</span>{}{}</p>",
        esc(&item.recording_id),
        esc(&item.model_decision),
        fmt_media(v.recording.duration_ms),
        esc(item.teacher_id.as_deref().unwrap_or("-")),
        fmt_time(item.created_at_ms),
        item.version,
        if item.qa_sample {
            " · <span class=\"badge\">QA sample of a pass</span>"
        } else {
            ""
        },
        v.recording
            .partial_reason
            .as_ref()
            .map(|p| format!(" · <span class=\"partial\">partial: {}</span>", esc(p)))
            .unwrap_or_default(),
        sev = severity_name(item.severity_rank),
    );
    let claim = if item.state == "decided" {
        format!(
            "<p class=\"claim decided\" id=\"claim\">Decided: <b id=\"human-decision\">{}</b>{}</p>",
            esc(item.human_decision.as_deref().unwrap_or("?")),
            item.decided_at_ms
                .map(|t| format!(" at {}", fmt_time(t)))
                .unwrap_or_default()
        )
    } else {
        match &view.claim {
            Some(c) if c.mine => format!(
                "<p class=\"claim mine\" id=\"claim\" data-mine=\"true\">You hold this recording until \
                 <span id=\"claim-until\">{}</span>; the hold is renewed while this page is open.</p>",
                fmt_time(c.until_ms)
            ),
            Some(c) => format!(
                "<p class=\"claim other\" id=\"claim\" data-mine=\"false\">Claimed by <b>{}</b> until {}: \
                 you can look, but not decide.</p>",
                esc(&c.holder_name),
                fmt_time(c.until_ms)
            ),
            None => "<p class=\"claim other\" id=\"claim\" data-mine=\"false\">Not held.</p>".into(),
        }
    };
    b.push_str(&claim);
    b.push_str(&timeline(view));
    b.push_str("<section id=\"findings\"><h2>Findings</h2>");
    if view.findings.is_empty() {
        b.push_str("<p class=\"hint\">No findings: the model passed this recording (a quality-check sample).</p>");
    }
    for f in &view.findings {
        b.push_str(&finding_article(staff, view, f, policy, can_decide));
    }
    b.push_str("</section>");
    if item.state == "open" {
        let dis = if can_decide { "" } else { " disabled" };
        let _ = write!(
            b,
            "<section id=\"decide\"><h2>Decide the recording</h2>\
             <form method=\"post\" action=\"/review/items/{id}/decide\" id=\"decide-recording\">{csrf}\
             <input type=\"hidden\" name=\"version\" value=\"{version}\">\
             <input type=\"hidden\" name=\"target\" value=\"recording\">\
             <label><input type=\"radio\" name=\"action\" value=\"confirm\" id=\"action-confirm\"{dis}> \
             Confirm: a violation (<kbd>c</kbd>)</label>\
             <label><input type=\"radio\" name=\"action\" value=\"dismiss\" id=\"action-dismiss\"{dis}> \
             Dismiss: no violation (<kbd>x</kbd>)</label>\
             {reasons}<textarea name=\"note\" id=\"note\" maxlength=\"2000\" placeholder=\"note (optional)\"></textarea>\
             <button type=\"submit\" id=\"submit-decision\"{dis}>Decide (<kbd>Enter</kbd>)</button></form>\
             <p class=\"hint\">Keys: <kbd>c</kbd> confirm, <kbd>x</kbd> dismiss, <kbd>1</kbd>–<kbd>9</kbd> \
             reason, <kbd>Enter</kbd> decide, <kbd>r</kbd> reveal evidence, <kbd>n</kbd> note.</p></section>",
            id = item.id,
            csrf = csrf_field(staff),
            version = item.version,
            reasons = reason_select(
                policy,
                &[ReviewActKind::Confirm, ReviewActKind::Dismiss],
                "reason"
            ),
        );
    } else if staff.role >= Role::Lead {
        let _ = write!(
            b,
            "<section id=\"reopen\"><h2>Reopen (appeal)</h2>\
             <form method=\"post\" action=\"/review/items/{id}/reopen\" id=\"reopen-form\">{csrf}\
             <input type=\"hidden\" name=\"version\" value=\"{version}\">{reasons}\
             <input name=\"note\" placeholder=\"note (optional)\" maxlength=\"2000\">\
             <button type=\"submit\">Reopen</button></form></section>",
            id = item.id,
            csrf = csrf_field(staff),
            version = item.version,
            reasons = reason_select(policy, &[ReviewActKind::Reopen], "reopen-reason"),
        );
    }
    b.push_str(&history_table(&view.history));
    let extra = format!(
        " data-item=\"{}\" data-mine=\"{}\" data-lease-ms=\"{}\" data-reveal-default=\"{}\"",
        item.id, can_decide, lease_ms, staff.user.reveal_default
    );
    layout(
        &format!("Recording {}", item.recording_id),
        Some(staff),
        "item",
        &extra,
        &b,
    )
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{:.1} %", r * 100.0))
}

fn dur(ms: Option<i64>) -> String {
    ms.map_or_else(|| "–".into(), fmt_duration)
}

pub fn metrics_page(staff: &Staff, s: &Summary) -> String {
    let mut b = format!(
        "<h1>Metrics</h1><p class=\"hint\">Aggregates over every queued recording; nothing per reviewer.</p>\
         <dl class=\"metrics\" id=\"metrics\">\
         <dt>Decided</dt><dd id=\"m-decided\">{}</dd>\
         <dt>Time to decision, p50</dt><dd id=\"m-p50\">{}</dd>\
         <dt>Time to decision, p99</dt><dd id=\"m-p99\">{}</dd>\
         <dt>Model overturned by reviewers</dt><dd id=\"m-overturn\">{} ({} of {})</dd>\
         <dt>Reopened (appeals and checks)</dt><dd id=\"m-reopened\">{}</dd>\
         <dt>Overturned on appeal</dt><dd id=\"m-appeal\">{} ({} of {} decided again)</dd>\
         <dt>Open in the queue</dt><dd id=\"m-open\">{}</dd>\
         <dt>Queue age, p50</dt><dd id=\"m-age-p50\">{}</dd>\
         <dt>Oldest in the queue</dt><dd id=\"m-age-max\">{}</dd></dl>",
        s.decided,
        dur(s.p50_decision_ms),
        dur(s.p99_decision_ms),
        pct(s.overturn_rate()),
        s.overturned,
        s.decided,
        s.reopened,
        pct(s.appeal_overturn_rate()),
        s.appeals_overturned,
        s.appeals_resolved,
        s.open,
        dur(s.p50_queue_age_ms),
        dur(s.oldest_queue_age_ms),
    );
    b.push_str("<h2>Decisions by reason</h2><table><thead><tr><th>Reason</th><th>Count</th></tr></thead><tbody>");
    for (code, n) in &s.by_reason {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{n}</td></tr>",
            esc(code)
        );
    }
    b.push_str("</tbody></table>");
    layout("Metrics", Some(staff), "metrics", "", &b)
}

pub fn users_page(staff: &Staff, users: &[UserRow], now_ms: i64) -> String {
    let mut b = String::from(
        "<h1>Users</h1><p class=\"hint\">Add accounts with <code>classguard user add NAME --role ROLE</code>.</p>\
         <table id=\"users\"><thead><tr><th>Name</th><th>Role</th><th>State</th><th>Failed sign-ins</th>\
         <th>Change</th></tr></thead><tbody>",
    );
    for u in users {
        let state = if u.disabled {
            "disabled".to_string()
        } else if u.locked_until_ms > now_ms {
            format!("locked until {}", fmt_time(u.locked_until_ms))
        } else {
            "active".into()
        };
        // Unlock, disable or enable, and a role change to each other role.
        let (toggle, toggle_text) = if u.disabled {
            ("enable", "Enable")
        } else {
            ("disable", "Disable")
        };
        let mut ops = vec![
            ("unlock".to_string(), "Unlock".to_string()),
            (toggle.to_string(), toggle_text.to_string()),
        ];
        for r in [Role::Reviewer, Role::Lead, Role::Admin] {
            if r.as_str() != u.role {
                ops.push((
                    format!("role:{}", r.as_str()),
                    format!("Make {}", r.as_str()),
                ));
            }
        }
        let _ = write!(
            b,
            "<tr data-user=\"{id}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
            esc(&u.name),
            esc(&u.role),
            esc(&state),
            u.failed_logins,
            id = u.id
        );
        for (op, text) in ops {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/review/users/{}\" class=\"inline\">{}\
                 <input type=\"hidden\" name=\"op\" value=\"{op}\"><button type=\"submit\">{}</button></form> ",
                u.id,
                csrf_field(staff),
                esc(&text)
            );
        }
        b.push_str("</td></tr>");
    }
    b.push_str("</tbody></table>");
    layout("Users", Some(staff), "users", "", &b)
}

pub fn audit_page(staff: &Staff, rows: &[AuditRow], users: &[UserRow]) -> String {
    let name = |id: Option<i64>| {
        id.and_then(|id| users.iter().find(|u| u.id == id))
            .map_or_else(|| "-".to_string(), |u| u.name.clone())
    };
    let mut b = String::from(
        "<h1>Audit log</h1><table id=\"audit\"><thead><tr><th>When</th><th>Who</th><th>What</th>\
         <th>Item</th><th>Detail</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            b,
            "<tr data-action=\"{a}\"><td>{}</td><td>{}</td><td>{a}</td><td>{}</td><td>{}</td></tr>",
            fmt_time(r.at_ms),
            esc(&name(r.user_id)),
            r.item_id
                .map(|i| format!("<a href=\"/review/items/{i}\">{i}</a>"))
                .unwrap_or_default(),
            esc(&r.detail),
            a = esc(&r.action),
        );
    }
    b.push_str("</tbody></table>");
    layout("Audit log", Some(staff), "audit", "", &b)
}

pub fn settings_page(staff: &Staff) -> String {
    let body = format!(
        "<h1>Settings</h1><form method=\"post\" action=\"/review/settings\" id=\"settings\">{}\
         <label><input type=\"checkbox\" name=\"reveal_default\" value=\"1\"{}> Show evidence unblurred and \
         unmuted without a click (every view is still logged)</label>\
         <button type=\"submit\">Save</button></form>",
        csrf_field(staff),
        if staff.user.reveal_default {
            " checked"
        } else {
            ""
        }
    );
    layout("Settings", Some(staff), "settings", "", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn query_strings_are_percent_encoded_and_skip_empties() {
        assert_eq!(
            query_string(&[("label", "contact_info"), ("teacher", "t 1&x"), ("to", "")]),
            "label=contact_info&teacher=t%201%26x"
        );
    }

    #[test]
    fn times_and_durations_read_naturally() {
        assert_eq!(fmt_time(1_796_083_200_000), "2026-12-01 00:00:00 UTC");
        assert_eq!(fmt_duration(42_000), "42 s");
        assert_eq!(fmt_duration(5 * 60_000), "5 min");
        assert_eq!(fmt_duration(3_900_000), "1 h 5 min");
        assert_eq!(fmt_duration(-5), "0 s");
        assert_eq!(fmt_media(2_817), "0:02.8");
        assert_eq!(fmt_media(61_500), "1:01.5");
        assert_eq!(severity_name(3), "high");
        assert_eq!(severity_name(-1), "none");
    }

    #[test]
    fn pages_never_carry_inline_script_or_style() {
        let html = login_page("tok\"en", Some("<b>bad</b>"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("&lt;b&gt;bad&lt;/b&gt;"));
        assert!(!html.contains("<script>"));
        assert!(!html.contains("style="));
        assert!(!error_page(StatusCode::CONFLICT, "x").contains("onclick"));
    }
}
